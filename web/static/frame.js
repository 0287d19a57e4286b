// The frame page's preview: stretch and detector choose the picture; buttons, +/- and the wheel zoom.
(function () {
  "use strict";
  const image = document.getElementById("preview");
  if (!image) return;
  const stretch = document.getElementById("stretch");
  const detector = document.getElementById("detector");
  const level = document.getElementById("zoom-level");
  const stage = document.getElementById("stage") || image;  // zooms the picture and its matched stars together
  let zoom = 1;
  function source() {
    const params = new URLSearchParams({ stretch: stretch.value });
    if (detector && detector.value) params.set("hdu", detector.value);
    image.src = image.dataset.base + "?" + params.toString();
  }
  function setZoom(value) {
    zoom = Math.min(16, Math.max(0.25, value));
    stage.style.width = (zoom * 100) + "%";
    level.textContent = Math.round(zoom * 100) + "%";
  }
  stretch.addEventListener("change", source);
  if (detector) detector.addEventListener("change", source);
  document.getElementById("zoom-in").addEventListener("click", function () { setZoom(zoom * 1.5); });
  document.getElementById("zoom-out").addEventListener("click", function () { setZoom(zoom / 1.5); });
  document.getElementById("zoom-fit").addEventListener("click", function () { setZoom(1); });
  document.getElementById("viewport").addEventListener("wheel", function (event) {
    if (!event.ctrlKey && !event.altKey) return;
    event.preventDefault();
    setZoom(event.deltaY < 0 ? zoom * 1.25 : zoom / 1.25);
  }, { passive: false });
  document.addEventListener("keydown", function (event) {
    if (event.target.closest("input, select, textarea")) return;
    if (event.key === "+" || event.key === "=") setZoom(zoom * 1.5);
    if (event.key === "-") setZoom(zoom / 1.5);
  });
})();
