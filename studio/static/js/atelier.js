// Behaviour the site's pages declare with data attributes, so that no page needs inline script (the
// Content-Security-Policy allows scripts from this origin only).
//   <form data-confirm="Revoke this key?">      asks before submitting
//   <button data-copy="element-id">Copy</button> copies that element's text
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

document.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
  const source = button ? document.getElementById(button.dataset.copy) : null;
  if (source) navigator.clipboard.writeText(source.textContent);
});
