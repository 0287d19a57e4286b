"""Selection names for X-ray summaries, their links, named metrics and
region files (registered on :data:`archive.query.FIELDS`).

A summary counts only when it describes the file's current version.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from sqlalchemy import ColumnElement, Select, Text, case, exists, func, select

from archive.models import (
    Exposure,
    File,
    HeaderCard,
    NamedMetric,
    Observation,
    RegionFile,
    Root,
    XraySummary,
    aliased,
)
from archive.xray_kinds import XRAY_KINDS, XRAY_ROLES


def _current(column, scale: float = 1.0) -> Callable[[], ColumnElement]:
    def expression() -> ColumnElement:
        version = select(File.version).where(File.id == Exposure.file_id).correlate(Exposure).scalar_subquery()
        value = column / scale if scale != 1.0 else column
        return (
            select(value).where(XraySummary.file_id == Exposure.file_id, XraySummary.file_version == version)
            .correlate(Exposure).scalar_subquery()
        )

    return expression


def _linked_path(column_name: str) -> Callable[[], ColumnElement]:
    """The path of the file a spectrum links to (its background, response or ARF)."""

    def expression() -> ColumnElement:
        target, root = aliased(File), aliased(Root)
        return (
            select(root.path + "/" + target.relpath)
            .select_from(XraySummary)
            .join(target, target.id == getattr(XraySummary, column_name))
            .join(root, root.id == target.root_id)
            .where(XraySummary.file_id == Exposure.file_id)
            .correlate(Exposure).scalar_subquery()
        )

    return expression


def named_metric(name: str) -> Callable[[], ColumnElement]:
    """The latest value of the named metric ``name`` of the exposure."""
    return lambda: (
        select(NamedMetric.value).where(NamedMetric.exposure_id == Exposure.id, NamedMetric.name == name)
        .order_by(NamedMetric.id.desc()).limit(1).correlate(Exposure).scalar_subquery()
    )


def _latest_region() -> ColumnElement:
    return (
        select(RegionFile.path).where(RegionFile.exposure_id == Exposure.id).order_by(RegionFile.id.desc()).limit(1)
        .correlate(Exposure).scalar_subquery()
    )


def _region_count() -> ColumnElement:
    return select(func.count(RegionFile.id)).where(RegionFile.exposure_id == Exposure.id).correlate(Exposure).scalar_subquery()


def _mission() -> ColumnElement:
    """The observation's mission (xmm, nustar, chandra as fetched), else for
    an X-ray file its TELESCOP in lower case (xmm, nustar, chandra, swift,
    xte, erosita); NULL for other files, whose telescope is no mission."""
    fetched = select(Observation.mission).where(Observation.id == Exposure.observation_id).correlate(Exposure).scalar_subquery()
    is_xray = exists().where(XraySummary.file_id == Exposure.file_id).correlate(Exposure)
    return func.coalesce(fetched, case((is_xray, func.lower(Exposure.telescope))))


@functools.cache
def _placeholders() -> list[str]:
    from archive.keywords import load_maps

    return sorted(load_maps().placeholders)


def _filter_cards() -> Select:
    """The text of FILTER cards that name a filter (not NONE, N/A...)."""
    value = func.trim(HeaderCard.value_text, type_=Text)  # typed: a text field, sorted as text (query.byte_order)
    return select(value).where(HeaderCard.keyword == "FILTER", func.upper(value).not_in(_placeholders()))


def _xray_filter() -> ColumnElement:
    """An X-ray file's FILTER card (XMM EPIC: Thin1, Medium, Thick...; the
    first HDU that has one): a blocking filter, kept out of ``band``."""
    is_xray = exists().where(XraySummary.file_id == Exposure.file_id).correlate(Exposure)
    card = (
        _filter_cards().where(HeaderCard.file_id == Exposure.file_id)
        .order_by(HeaderCard.hdu_index, HeaderCard.position).limit(1).correlate(Exposure).scalar_subquery()
    )
    return case((is_xray, card))


def _xray_filters() -> Select:
    """The filter each X-ray file names (what xray_filter holds), read file
    by file from xray_summaries (a seek in each one's cards): all FILTER
    cards would be a read of every optical frame's too. For a hint when
    xray_filter == '...' found nothing."""
    card = (
        _filter_cards().where(HeaderCard.file_id == XraySummary.file_id)
        .order_by(HeaderCard.hdu_index, HeaderCard.position).limit(1).correlate(XraySummary).scalar_subquery()
    )
    return select(card).select_from(XraySummary)


def register(register_field) -> None:
    register_field("xray_filter", _xray_filter, "text", stored=_xray_filters)
    register_field("mission", _mission, "text")
    register_field("xray_kind", _current(XraySummary.kind), "text", values=XRAY_KINDS)
    register_field("xray_role", _current(XraySummary.role), "text", values=XRAY_ROLES)
    for name in ("counts", "rate", "net_rate", "backscal", "channels", "n_events", "mean_rate", "frac_rms",
                 "mjd_start", "mjd_stop", "mjd_mid"):
        register_field(name, _current(getattr(XraySummary, name)), "number")
    for name, column in (("exposure", XraySummary.exposure_s), ("gti_exposure", XraySummary.gti_exposure_s),
                         ("time_span", XraySummary.time_span_s)):
        register_field(name, _current(column), "number")
        register_field(f"{name}_ks", _current(column, 1000.0), "number")
    register_field("background_file", _linked_path("background_id"), "text")
    register_field("response", _linked_path("response_id"), "text")
    register_field("arf", _linked_path("arf_id"), "text")
    register_field("region", _latest_region, "text")
    register_field("n_regions", _region_count, "number")
