// The column chooser writes the "columns" field of the search form.
(function () {
  "use strict";
  const form = document.getElementById("search");
  if (!form) return;
  const field = form.querySelector("input[name=columns]");
  form.querySelectorAll("details.chooser input[type=checkbox]").forEach(function (box) {
    box.addEventListener("change", function () {
      const chosen = Array.from(form.querySelectorAll("details.chooser input:checked")).map(function (b) { return b.value; });
      field.value = chosen.join(",");
    });
  });
})();
