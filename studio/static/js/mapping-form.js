// The dataset mapping form: show only the column pickers the chosen kind uses. Each picker names its kinds in
// data-kinds; without JavaScript every picker shows, and the server reads only the chosen kind's pickers.
(function () {
  function update(form, kind) {
    form.querySelectorAll("select[data-kinds]").forEach((picker) => {
      const used = picker.dataset.kinds.split(" ").includes(kind.value);
      (picker.closest(".field") || picker).hidden = !used;
      picker.disabled = !used;
    });
  }

  document.querySelectorAll("form.mapping-form").forEach((form) => {
    const kind = form.querySelector('select[name="kind"]');
    if (!kind) return;
    kind.addEventListener("change", () => update(form, kind));
    update(form, kind);
  });
})();
