// The launch form: choosing a preset fills in its settings (the estimate then updates with the form's
// change event). The presets' values come from the page's <script type="application/json" id="preset-values">.
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
})();
