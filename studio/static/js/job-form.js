// The launch form: choosing a preset fills in its settings, and choosing a dataset version whose kind the
// goal cannot train on switches to the first goal that can (feedback → KTO, pairs → DPO); the estimate then
// updates with the form's change event. The presets' values and the kinds each goal trains on come from the
// page's <script type="application/json" id="preset-values"> and id="stage-kinds".
(() => {
  const form = document.getElementById("job-form");
  const source = document.getElementById("preset-values");
  if (!form || !source) return;
  const values = JSON.parse(source.textContent);
  form.querySelectorAll('input[name="preset"]').forEach((radio) => radio.addEventListener("change", () => {
    for (const [name, value] of Object.entries(values[radio.value] || {})) {
      const field = form.elements.namedItem(name);
      if (!field) continue;
      if (field.type === "checkbox") field.checked = Boolean(value);
      else field.value = value === null ? "" : String(value);
    }
  }));

  const kindsSource = document.getElementById("stage-kinds");
  const dataset = form.elements.namedItem("dataset_version");
  if (!kindsSource || !dataset) return;
  const stageKinds = JSON.parse(kindsSource.textContent);
  dataset.addEventListener("change", () => {
    const kind = dataset.selectedOptions[0]?.dataset.kind;
    const current = form.querySelector('input[name="stage"]:checked');
    if (!kind || (current && (stageKinds[current.value] || []).includes(kind))) return;
    const fitting = Object.keys(stageKinds).find((stage) => stageKinds[stage].includes(kind));
    const radio = fitting && form.querySelector(`input[name="stage"][value="${fitting}"]`);
    if (radio) radio.checked = true;
  });
})();
