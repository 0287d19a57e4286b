"""The selection language: parsing, errors, and the same answers on both backends."""

from __future__ import annotations

import pytest
from factories import night_of_frames, write_frame

from archive.exceptions import SelectionError
from archive.query import BoolOp, Compare, Frames, Header, In, IsNull, Match, Not, parse, parse_columns


@pytest.mark.parametrize(
    "text, tree",
    [
        ("band == 'V'", Compare(field=parse("band == 'V'").field, op="==", value="V")),
        ("3852-3861,3885", Frames(((3852, 3861), (3885, 3885)))),
        ("3852", Frames(((3852, 3852),))),
        ("exptime = 30", Compare(parse("exptime = 30").field, "==", 30)),
        ("band <> 'V'", Compare(parse("band <> 'V'").field, "!=", "V")),
        ("dec > -30.5", Compare(parse("dec > -30.5").field, ">", -30.5)),
    ],
)
def test_parse_trees(text, tree):
    assert parse(text) == tree


def test_precedence_not_and_or():
    node = parse("not band == 'V' and exptime > 1 or object is null")
    assert isinstance(node, BoolOp) and node.op == "or"
    assert isinstance(node.items[0], BoolOp) and node.items[0].op == "and"
    assert isinstance(node.items[0].items[0], Not)
    assert isinstance(node.items[1], IsNull)


def test_header_forms():
    assert parse("hdr['ESO INS DROT POSANG'] > 100").field == Header("ESO INS DROT POSANG", None, 0)
    assert parse("hdr['hierarch eso obs id'] == 1").field.keyword == "ESO OBS ID"
    assert parse('hdr[1]["EXTNAME"] == "SCI"').field.hdu == 1


def test_in_like_glob_between():
    assert parse("band not in ('B', 'V')") == In(parse("band == 'x'").field, ("B", "V"), True)
    assert isinstance(parse("object like 'NGC%'"), Match)
    assert parse("relpath glob '*.fz'").glob is True
    assert parse("exptime not between 1 and 2").negate is True


def test_strings_with_quotes():
    assert parse("object == 'O''Brien'").value == "O'Brien"
    assert parse('object == "say \\"hi\\""').value == 'say "hi"'


def test_column_lists():
    fields = parse_columns("frame_number, hdr['EXPTIME'], path")
    assert [getattr(f, "name", getattr(f, "keyword", None)) for f in fields] == ["frame_number", "EXPTIME", "path"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("band ==", "expected a value (a number, a quoted string, true, false or null), found 'the end' at column 8"),
        ("band == 'V' and", "expected a name (a column or hdr['KEY']), found 'the end' at column 16"),
        ("bnd == 'V'", "unknown name 'bnd' at column 1; did you mean band?"),
        ("exptime > 'long'", "exptime is a number; compare it with a number, not 'long'"),
        ("band == 5", "band is text; compare it with a quoted string, not 5"),
        ("hdr[EXPTIME] > 3", "expected a quoted keyword such as 'EXPTIME', found 'EXPTIME' at column 5"),
        ("3861-3852", "range 3861-3852 runs backwards at column 1"),
        ("band == 'V", "unexpected character \"'\" at column 9"),
        ("band ~ 'V'", "unexpected character '~' at column 6"),
        ("band == 'V' band", "expected 'and', 'or' or the end, found 'band' at column 13"),
        ("(band == 'V'", "expected ')', found 'the end' at column 13"),
        ("date_obs > 'yesterday'", "date_obs is a time; compare it with a quoted ISO date"),
        ("sqrt(exptime) > 1", "unknown function 'sqrt' (known: abs) at column 1"),
        ("abs(band) > 1", "abs() needs a number, band is text"),
        ("band", "expected a comparison (==, !=, <, >, in, between, like, glob, is null), found 'the end'"),
        ("", "empty selection"),
    ],
)
def test_malformed_selections_get_one_line_that_points_at_the_problem(catalog, text, message):
    with pytest.raises(SelectionError) as info:
        catalog.query(text if text else " ", columns=None) if text else parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.fixture
def night(catalog, tmp_path, rng):
    night_of_frames(tmp_path / "night", rng)
    write_frame(tmp_path / "night" / "muse-5001.fits", rng, {
        "IMAGETYP": None, "HIERARCH ESO DPR TYPE": "OBJECT", "HIERARCH ESO INS DROT POSANG": 135.6,
        "HIERARCH ESO INS MODE": "WFM-NOAO-N", "DATE-OBS": "2014-07-28T03:00:00", "HIERARCH ESO TEL GEOLON": -70.4,
        "FILTER": None, "OBJECT": "O'Brien field", "LONGSTR": "x" * 300, "FLAGGED": True,
    }, extensions=1)
    catalog.ingest([tmp_path / "night"])
    return catalog


def frames(catalog, selection):
    return sorted(catalog.query(selection, columns="frame_number")["frame_number"].tolist())


# The same answers on SQLite and PostgreSQL: each runs on both backends.
@pytest.mark.parametrize(
    "selection, expected",
    [
        ("band == 'V' and frame_type == 'science' and exptime >= 90", [3869, 3870, 3871]),
        ("3852-3854,3875", [3852, 3853, 3854, 3875]),
        ("frame_type == 'bias'", [3852, 3853, 3854]),
        ("band in ('B', 'R') and frame_type == 'flat'", [3855, 3856, 3857, 3861, 3862, 3863]),
        ("band is null", [3852, 3853, 3854, 5001]),
        ("not band is null and exptime between 100 and 130", [3866, 3870, 3874]),
        ("hdr['ESO INS DROT POSANG'] > 100", [5001]),
        ("hdr['HIERARCH ESO INS MODE'] == 'WFM-NOAO-N' and night == '2014-07-27'", [5001]),
        ("hdr['EXPTIME'] >= 150", [3867, 3871, 3875]),
        ("hdr['FILTER'] in ('B', 'V') and hdr['IMAGETYP'] == 'Bias Frame'", []),
        ("hdr['FILTER'] in ('B') and hdr['IMAGETYP'] == 'Flat Field'", [3855, 3856, 3857]),
        ("hdr[1]['EXTNAME'] == 'EXT1'", [5001]),
        ("hdr[0]['EXTNAME'] == 'EXT1'", []),
        ("hdr['ESO INS DROT POSANG'] is null and frame_type == 'bias'", [3852, 3853, 3854]),
        ("hdr['ESO INS DROT POSANG'] is not null", [5001]),
        ("hdr['LONGSTR'] like 'xxx%'", [5001]),
        ("hdr['LONGSTR'] is not null", [5001]),
        ("hdr['FLAGGED'] == true", [5001]),
        ("hdr['OBJECT'] like 'o''brien%'", [5001]),
        ("object like 'O''BRIEN%'", [5001]),
        ("relpath glob '*-38[5]2.fits' or relpath glob 'muse-*'", [3852, 5001]),
        ("relpath glob '*-385[!0-3].fits'", [3854, 3855, 3856, 3857, 3858, 3859]),
        ("relpath glob 'ngc3293-386?.fits'", list(range(3860, 3870))),
        ("date_obs >= '2014-07-28' and date_obs < '2014-07-29'", [5001]),
        ("abs(dec) > 58 and band == 'R' and frame_type == 'science'", [3872, 3873, 3874, 3875]),
        ("exptime == null", []),
        ("status == 'present' and 3852", [3852]),
    ],
)
def test_same_results_on_both_backends(night, selection, expected):
    assert frames(night, selection) == expected


def test_header_values_become_columns(night):
    frame = night.query("hdr['ESO INS DROT POSANG'] > 100")
    assert frame["hdr['ESO INS DROT POSANG']"].tolist() == [135.6]
    frame = night.query("frame_type == 'bias'", columns="frame_number,hdr['IMAGETYP'],hdr['EXPTIME']", sort="-frame_number")
    assert frame.values.tolist() == [[3854, "Bias Frame", 0.0], [3853, "Bias Frame", 0.0], [3852, "Bias Frame", 0.0]]


def test_sort_and_limit(night):
    frame = night.query("frame_type == 'science'", columns="frame_number,exptime", sort="-exptime,frame_number", limit=4)
    assert frame.values.tolist() == [[3867, 150.0], [3871, 150.0], [3875, 150.0], [3866, 120.0]]


def test_a_text_keyword_sorts_by_its_text(catalog, tmp_path, rng):
    """sort by hdr['OBJECT'] left the rows in id order: only the keyword's
    number was sorted on, and a text card has none."""
    for number, name in enumerate(["M31", "ngc 253", "Abell 1689", "M101"], start=1):
        write_frame(tmp_path / f"f-{number}.fits", rng, {"OBJECT": name, "FRAMENUM": number, "AIRMASS": 1 + number % 3 / 10})
    catalog.ingest([tmp_path])
    up = catalog.query(None, columns="hdr['OBJECT']", sort="hdr['OBJECT']")["hdr['OBJECT']"].tolist()
    assert up == sorted(up) == ["Abell 1689", "M101", "M31", "ngc 253"]
    down = catalog.query(None, columns="hdr['OBJECT']", sort="-hdr['OBJECT']")["hdr['OBJECT']"].tolist()
    assert down == up[::-1]
    numbers = catalog.query(None, columns="frame_number", sort="-hdr['AIRMASS'],frame_number")["frame_number"].tolist()
    assert numbers == [2, 1, 4, 3]  # a number still sorts as a number (1.2, 1.1, 1.1, 1.0)


def test_results_become_astropy_tables(night):
    table = night.query("band == 'V'").to_table()
    assert len(table) == 7 and "frame_number" in table.colnames
    assert len(night.to_table("frame_type == 'bias'")) == 3


def test_selection_values_are_bound_never_formatted(night):
    hostile = "x'); drop table exposures; --"
    assert night.query(f"object == '{hostile.replace(chr(39), chr(39) * 2)}'").empty
    assert len(night.query()) == 25


def test_a_keyword_column_of_integers_shows_integers(catalog, tmp_path, rng):
    """TELHUM = 05 is 5, not 5.0; a keyword written with a decimal point stays a float."""
    write_frame(tmp_path / "a.fits", rng, {"TELHUM": 5, "TEMP": 5.0, "FRAMENUM": 1})
    write_frame(tmp_path / "b.fits", rng, {"TELHUM": 12, "TEMP": 7.5, "FRAMENUM": 2})
    catalog.ingest([tmp_path])
    names, rows = catalog.rows(None, columns="hdr['TELHUM'],hdr['TEMP']")
    assert rows == [(5, 5.0), (12, 7.5)]
    assert [type(v) for v in rows[0]] == [int, float]


def test_an_unclosed_bracket_in_a_glob_is_the_character_itself_on_both_backends(catalog, tmp_path, rng):
    """As in the shell: 'a[1*' matches a[1.fits. SQLite's GLOB matched nothing
    with it, PostgreSQL's regex took the [ as itself: two answers."""

    for name in ("a[1.fits", "a1.fits", "b[2].fits"):
        write_frame(tmp_path / "g" / name, rng)
    catalog.ingest([tmp_path / "g"])

    def names(selection):
        return sorted(catalog.query(selection, columns="relpath")["relpath"])

    assert names("relpath glob 'a[1*'") == ["a[1.fits"]
    assert names("relpath glob 'a[1]*'") == ["a1.fits"]  # a class: the digit 1
    assert names("relpath glob '*[[]*'") == ["a[1.fits", "b[2].fits"]
    assert names("relpath glob 'b[[]2]*'") == ["b[2].fits"]


def test_an_exposure_id_not_in_the_catalog_is_said_by_the_library_too(catalog):
    from archive.exceptions import NotFoundError

    for call in (catalog.headers, catalog.exposure):
        with pytest.raises(NotFoundError, match="^no exposure with exposure id 424242 in the catalog$"):
            call(424242)


def test_a_list_of_whole_and_decimal_numbers_matches_exactly_on_both_backends(catalog, tmp_path, rng):
    """PostgreSQL typed an IN list by its first value: ``in (1, 99.6)`` matched
    an EXPTIME of 100, ``exptime in (0, 38564.608926889)`` nothing, and a long
    mixed list failed with 'cannot dump lists of mixed types' (a user trial)."""
    for name, exptime in (("a", 100.0), ("b", 99.6), ("c", 38564.608926889)):
        write_frame(tmp_path / "n" / f"{name}.fits", rng, {"EXPTIME": exptime, "OBJECT": name})
    catalog.ingest([tmp_path / "n"])

    def objects(selection):
        return sorted(catalog.query(selection, columns="object")["object"])

    assert objects("hdr['EXPTIME'] in (1, 99.6)") == ["b"]
    assert objects("exptime in (0, 38564.608926889)") == ["c"]
    assert objects("exptime in (100, 99.6)") == ["a", "b"]
    long_list = ", ".join(map(str, range(1000))) + ", 38564.608926889"  # one parameter, an array on PostgreSQL
    assert objects(f"hdr['EXPTIME'] in ({long_list})") == ["a", "c"]
    assert objects(f"exptime in ({long_list})") == ["a", "c"]


GAIA_IDS = {"a": 5853498713190525696, "b": 5853498713190525697, "c": 5853498713190525701}  # one double for a and b


def test_integers_beyond_2_53_are_matched_and_shown_by_their_digits(catalog, tmp_path, rng):
    """A header's numbers are doubles: 5853498713190525697 matched ...696 and
    ...701 on PostgreSQL, nothing on SQLite, and was shown as ...952, a
    number no file holds (a user trial)."""
    for name, source in GAIA_IDS.items():
        write_frame(tmp_path / "n" / f"{name}.fits", rng, {"OBJECT": name, "GAIAID": source, "LOGF": name == "a"})
    catalog.ingest([tmp_path / "n"])

    def objects(selection):
        return sorted(catalog.query(selection, columns="object")["object"])

    assert objects("hdr['GAIAID'] == 5853498713190525697") == ["b"]
    assert objects("hdr['GAIAID'] != 5853498713190525697") == ["a", "c"]
    assert objects("hdr['GAIAID'] in (5853498713190525696, 5853498713190525701)") == ["a", "c"]
    assert objects("hdr['GAIAID'] > 5") == ["a", "b", "c"]  # a small number tells them from it exactly
    names, rows = catalog.rows(parse("hdr['GAIAID'] > 5"), columns="object,hdr['GAIAID'],hdr['LOGF']", sort="object")
    assert [tuple(row[1:]) for row in rows] == [(GAIA_IDS["a"], True), (GAIA_IDS["b"], False), (GAIA_IDS["c"], False)]
    for selection in ("hdr['GAIAID'] > 5853498713190525696", "hdr['GAIAID'] between 0 and 5853498713190525701"):
        with pytest.raises(SelectionError, match=r"is beyond 2\*\*53 \(9007199254740992\), the last integer the doubles a "
                                                 r"header's numbers are kept in all hold: (>|between) would compare "
                                                 r"hdr\['GAIAID'\] with a neighbour; ==, != and in compare it exactly"):
            catalog.query(selection)


def test_integers_of_more_digits_than_int64_are_written_exactly_in_every_format(url, tmp_path):
    """HUGEI = 123456789012345678901234567890 printed as ...877719597056 and
    made --format ecsv end in 'unexpected OverflowError' (a user trial)."""
    import json

    from factories import obsarch

    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    0",
             "OBJECT  = 'huge'", "MAXI    =  9223372036854775807", "HUGEI   = 123456789012345678901234567890", "END"]
    text = "".join(c.ljust(80) for c in cards)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "huge.fits").write_bytes((text + " " * (-len(text) % 2880)).encode())
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "d"))
    columns = ["--columns", "hdr['MAXI'],hdr['HUGEI']"]
    csv_out = obsarch(url, "query", "object == 'huge'", *columns, "--format", "csv").stdout
    assert csv_out.splitlines()[1] == "9223372036854775807,123456789012345678901234567890"
    assert json.loads(obsarch(url, "query", "object == 'huge'", *columns, "--format", "json").stdout) == [
        {"hdr['MAXI']": 2**63 - 1, "hdr['HUGEI']": 123456789012345678901234567890}]
    ecsv = obsarch(url, "query", "object == 'huge'", *columns, "--format", "ecsv").stdout
    assert ecsv.splitlines()[-1] == "9223372036854775807 123456789012345678901234567890"
    assert len(obsarch(url, "query", "hdr['MAXI'] == 9223372036854775807", "--format", "csv").stdout.splitlines()) == 2


def test_integer_lists_at_and_beyond_the_doubles_are_exact_however_long(catalog, tmp_path, rng):
    """2**53 + 1 is kept as the double 2**53, so 2**53 itself is compared by
    its digits too; a list of 1,500 Gaia ids was a chain of ORs SQLite refused
    (depth 1000); a long list with an integer beyond 32 bits failed on
    PostgreSQL and lost that value on SQLite (a review)."""
    for name, value in (("a", 2**53 + 1), ("b", 2**53), ("c", 5853498713190525697)):
        write_frame(tmp_path / "n" / f"{name}.fits", rng, {"OBJECT": name, "X": value})
    catalog.ingest([tmp_path / "n"])

    def objects(selection):
        return sorted(catalog.query(selection, columns="object")["object"])

    assert objects(f"hdr['X'] == {2**53}") == ["b"]
    many = ", ".join(str(5853498713190525697 + 2 * k) for k in range(1500))  # ...697 first, then its odd neighbours
    assert objects(f"hdr['X'] in ({many})") == ["c"]
    ids = sorted(catalog.exposure_ids())
    wide = ", ".join(map(str, [*range(-600, 0), 5_000_000_000, ids[0]]))
    assert catalog.exposure_ids(f"id in ({wide})") == [ids[0]]
    assert objects(f"hdr['X'] in ({wide}, {2**53})") == ["b"]


def test_a_header_column_hint_takes_any_keyword_the_columns_could_name(url, tmp_path, rng):
    """The hint parsed the column's label again, and hdr["O'X"] came back as
    hdr['O'X']: exit 2 after the rows were written (a review)."""
    from factories import obsarch

    write_frame(tmp_path / "n" / "a.fits", rng, {"OBJECT": "a"})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "n"))
    result = obsarch(url, "query", "", "--columns", "object,hdr[\"O'X\"]", "--format", "csv")
    assert result.stderr.splitlines() == ["note: no file has a value for header keyword O'X"]


def test_a_logical_header_column_with_a_missing_value_is_a_masked_bool_in_ecsv(url, tmp_path, rng):
    """It came out as JSON strings (datatype string, subtype json) once logicals were shown as True/False (a review)."""
    from astropy.table import Table
    from factories import obsarch

    for name, header in (("a", {"FLAG": True}), ("b", {"FLAG": False}), ("c", {})):
        write_frame(tmp_path / "n" / f"{name}.fits", rng, {"OBJECT": name, **header})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "n"))
    out = obsarch(url, "query", "", "--columns", "object,hdr['FLAG']", "--sort", "object", "--format", "ecsv").stdout
    table = Table.read(out, format="ascii.ecsv")
    assert table["hdr['FLAG']"].dtype == bool
    assert list(table["hdr['FLAG']"].filled(False)) == [True, False, False] and list(table["hdr['FLAG']"].mask) == [False, False, True]


def test_a_keyword_column_shows_the_card_the_selection_matched(catalog, tmp_path):
    """With FILTER V in the primary HDU and R in the extension, `hdr['FILTER'] == 'R'` matched the file and its
    column showed V, the first card: a row that contradicted its own selection. The column now shows the first
    card that satisfies the selection's condition on the keyword (outside a NOT), else the first card, as before."""
    import numpy as np
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    primary.header.update({"FILTER": "V", "EXPTIME": 10.0})
    extension = fits.ImageHDU(np.zeros((4, 4), "f4"), name="SCI")
    extension.header.update({"FILTER": "R", "EXPTIME": 60.0})
    fits.HDUList([primary, extension]).writeto(tmp_path / "two.fits")
    catalog.ingest([tmp_path])

    def shown(selection: str, columns: str = "hdr['FILTER']", sort: str | None = None) -> list[tuple]:
        return catalog.rows(selection, columns=columns, sort=sort)[1]

    assert shown("hdr['FILTER'] == 'R'") == [("R",)]
    assert shown("hdr['FILTER'] != 'V'") == [("R",)]
    assert shown("hdr['FILTER'] == 'V'") == [("V",)]
    assert shown("hdr['FILTER'] in ('R', 'I') and hdr['EXPTIME'] > 30", "hdr['FILTER'],hdr['EXPTIME']") == [("R", 60)]
    assert shown("hdr['EXPTIME'] < 30", "hdr['EXPTIME']") == [(10,)]
    assert shown("hdr[1]['FILTER'] like 'r'", "hdr['FILTER'],hdr[0]['FILTER']", sort="hdr['FILTER']") == [("R", "V")]
    assert shown("hdr['FILTER'] glob 'V*'") == [("V",)]
    assert shown("not hdr['FILTER'] == 'I'") == [("V",)]  # under a NOT: no card to prefer, the first
    assert shown("hdr['FILTER'] not in ('V', 'B')") == [("R",)]  # a card outside the list, as !=
    assert shown("not hdr['FILTER'] in ('V', 'B')") == []  # some card is V
    assert shown(None) == [("V",)]


def test_a_keyword_column_keeps_a_huge_integer_exact_beside_a_float(catalog, tmp_path):
    """A column of 1234567890123456789 in one file and 1.5 in another was a float column, which showed the
    integer as 1.2345678901234568e+18, another number; such a column is shown as the cards wrote it."""
    from astropy.io import fits

    for name, value in (("big", 1234567890123456789), ("small", 1.5), ("whole", 7)):
        fits.PrimaryHDU(header=fits.Header({"SRCID": value, "OBJECT": name})).writeto(tmp_path / f"{name}.fits")
    catalog.ingest([tmp_path])
    assert catalog.rows("hdr['SRCID'] is not null", columns="object,hdr['SRCID']", sort="object")[1] == [
        ("big", "1234567890123456789"), ("small", "1.5"), ("whole", "7")]
    # beside one another, floats and integers a double holds stay numbers
    assert catalog.rows("hdr['SRCID'] < 100", columns="object,hdr['SRCID']", sort="object")[1] == [("small", 1.5), ("whole", 7.0)]


def _raw_card_file(path, *cards: str) -> None:
    """A primary HDU of the 80-character cards as written (astropy would respell them)."""
    lines = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    0", *cards, "END"]
    path.write_bytes("".join(line.ljust(80) for line in lines).ljust(2880).encode())


@pytest.fixture
def awkward(catalog, tmp_path):
    """Files whose values the two backends once answered differently (a hostile-input trial)."""
    from astropy.io import fits

    for name, value in (("a.fits", "a\\b"), ("end.fits", "end\\"), ("café.fits", "c")):
        fits.PrimaryHDU(header=fits.Header({"OBJECT": value})).writeto(tmp_path / name)
    _raw_card_file(tmp_path / "g1.fits", "GID     =    09007199254740993", "NID     =    -9007199254740995")
    _raw_card_file(tmp_path / "g2.fits", "GID     =     9007199254740993", "NID     =    -9007199254740996")
    _raw_card_file(tmp_path / "u.fits", "UNDEF   =", "FILTER  = 'V       '")
    two = fits.HDUList([fits.PrimaryHDU(header=fits.Header({"FILTER": "V"})), fits.ImageHDU(header=fits.Header({"FILTER": "R"}))])
    two.writeto(tmp_path / "vr.fits")
    catalog.ingest([tmp_path])
    return catalog


def _relpaths(catalog, selection: str, sort: str | None = None) -> list[str]:
    return [path.rsplit("/", 1)[1] for (path,) in catalog.rows(selection, columns="path", sort=sort)[1]]


@pytest.mark.parametrize("selection, found", [
    ("object like 'a\\\\b'", ["a.fits"]),  # PostgreSQL's LIKE took the backslash as an escape and found nothing
    ("object like 'end\\\\'", ["end.fits"]),  # ... and failed: 'LIKE pattern must not end with escape character'
    ("relpath like 'CAFÉ%'", ["café.fits"]),  # SQLite's LIKE folds ASCII letters only
    ("relpath like 'caf_.fits'", ["café.fits"]),
    ("hdr['GID'] == 9007199254740993", ["g1.fits", "g2.fits"]),  # 09007199254740993 is the same integer, as astropy reads it
    ("hdr['GID'] in (9007199254740993, 1)", ["g1.fits", "g2.fits"]),
    ("hdr['GID'] != 9007199254740993", []),
    ("hdr['NID'] == -9007199254740995", ["g1.fits"]),
    ("hdr['FILTER'] not in ('V', 'B')", ["vr.fits"]),  # a card outside the list, as != is a card that differs
    ("hdr['FILTER'] not like 'v'", ["vr.fits"]),
    ("hdr['FILTER'] not glob 'V'", ["vr.fits"]),
    ("hdr['FILTER'] not in (null)", ["u.fits", "vr.fits"]),
    ("hdr['FILTER'] not in ('V', null)", ["vr.fits"]),
    ("not hdr['FILTER'] in ('V', 'B')", ["a.fits", "café.fits", "end.fits", "g1.fits", "g2.fits"]),  # no card in the list
    ("hdr['NID'] not between -9007199254740996.0 and -1e15", []),
])
def test_selections_answer_alike_on_both_backends(awkward, selection, found):
    assert sorted(_relpaths(awkward, selection)) == found


def test_sorting_by_integers_beyond_a_double(awkward):
    """-9007199254740995 sorted before -...996 by its text: integers sharing a double sort by their exact value."""
    assert _relpaths(awkward, "hdr['NID'] is not null", sort="hdr['NID']") == ["g2.fits", "g1.fits"]
    assert _relpaths(awkward, "hdr['NID'] is not null", sort="-hdr['NID']") == ["g1.fits", "g2.fits"]


@pytest.mark.parametrize("pattern", ["[[:alpha:]]*", "[[.a.]]*", "[[=a=]]*"])
def test_a_glob_with_a_posix_bracket_form_is_refused_in_one_line(awkward, pattern):
    """PostgreSQL failed mid-query ('brackets [] not balanced'), SQLite matched nothing, and Python warned."""
    import warnings

    with warnings.catch_warnings(record=True) as seen, pytest.raises(SelectionError, match="holds a POSIX bracket form"):
        warnings.simplefilter("always")
        awkward.rows(f"object glob '{pattern}'")
    assert not seen


def test_a_long_in_list_with_a_float_on_an_integer_column(awkward):
    """PostgreSQL's array took the column's integer type and rounded 5.4 to 5 (over 500 values)."""
    sizes = ",".join(map(str, range(1000, 1600)))
    assert _relpaths(awkward, f"size in ({sizes}, 2879.5)") == []
    assert len(_relpaths(awkward, f"size in ({sizes}, 2880.0)")) == 6


def test_the_smallest_64_bit_integer_is_a_value(awkward):
    assert awkward.rows("hdr['GID'] == -9223372036854775808")[1] == []
    with pytest.raises(SelectionError, match="does not fit in 64 bits"):
        awkward.rows("hdr['GID'] == 9223372036854775808")


def test_a_keyword_of_undefined_values_is_not_called_missing(awkward):
    """'no file has a header keyword UNDEF' was false: it has cards, none with a value."""
    assert awkward.hints(None, "hdr['UNDEF']", ["hdr['UNDEF']"]) == ["no file has a value for header keyword UNDEF"]


def test_not_in_tests_each_card_against_every_value(catalog, tmp_path):
    """A card in the list for one kind of value counted as outside for another: SRCID = 5853498713190525697
    matched `not in (5853498713190525697, 12)`, and FLAG = T both `in (true, 5)` and `not in (true, 5)` (a review)."""
    _raw_card_file(tmp_path / "a.fits", "SRCID   =  5853498713190525697", "FLAG    =                    T", "NAME    = 'x       '")
    _raw_card_file(tmp_path / "b.fits", "SRCID   =                   12", "FLAG    =                    F", "NAME    = 'y       '")
    catalog.ingest([tmp_path])
    assert _relpaths(catalog, "hdr['SRCID'] not in (5853498713190525697, 12)") == []
    assert _relpaths(catalog, "hdr['SRCID'] not in (5853498713190525697, 13)") == ["b.fits"]
    assert _relpaths(catalog, "hdr['FLAG'] in (true, 5)") == ["a.fits"]
    assert _relpaths(catalog, "hdr['FLAG'] not in (true, 5)") == ["b.fits"]
    assert _relpaths(catalog, "hdr['FLAG'] not in (true)") == ["b.fits"]
    assert _relpaths(catalog, "hdr['NAME'] not in ('x', 3)") == ["b.fits"]
    assert catalog.rows("hdr['NAME'] not in ('x', 3)", columns="hdr['NAME']")[1] == [("y",)]


def test_a_frame_range_to_2_63_is_refused_in_one_line(awkward):
    """The range's dash was read as a minus sign once -2**63 became a value: 'unexpected OverflowError' (a review)."""
    with pytest.raises(SelectionError, match="the integer 9223372036854775808 does not fit in 64 bits"):
        awkward.rows("1-9223372036854775808")
