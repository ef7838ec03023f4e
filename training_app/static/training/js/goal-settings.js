// The job form's goal cards: a section marked data-goal="<stage>" (GRPO's rewards and sampling) shows only
// while that goal is chosen; the server renders it hidden or shown for the goal the form starts with.
(() => {
  const form = document.getElementById("job-form");
  if (!form) return;
  const sections = form.querySelectorAll("[data-goal]");
  const update = () => {
    const chosen = form.querySelector('input[name="stage"]:checked')?.value;
    sections.forEach((section) => { section.hidden = section.dataset.goal !== chosen; });
  };
  form.addEventListener("change", (event) => {
    if (event.target.name === "stage" || event.target.name === "dataset_version") update();
  });
})();
