// Drag-and-drop upload with a real progress bar (XMLHttpRequest reports upload progress; fetch does not).
(function () {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = form.querySelector('input[type="file"]');
  const nameInput = form.querySelector('input[name="name"]');
  const zone = document.getElementById("dropzone");
  const chosen = document.getElementById("chosen-file");
  const progress = document.getElementById("upload-progress");
  const bar = progress.querySelector(".progress-bar span");
  const label = progress.querySelector("p");
  const maxBytes = Number(form.dataset.maxBytes);

  function choose(file) {
    chosen.textContent = file ? `${file.name} · ${(file.size / 1048576).toFixed(1)} MB` : "";
    if (file && nameInput && !nameInput.value) nameInput.value = file.name.replace(/\.[^.]+$/, "");
  }
  input.addEventListener("change", () => choose(input.files[0]));
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("dragging")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (!event.dataTransfer.files.length) return;
    input.files = event.dataTransfer.files;
    choose(input.files[0]);
  });

  function showErrors(errors) {
    form.querySelectorAll(".error.js").forEach((node) => node.remove());
    for (const [field, messages] of Object.entries(errors)) {
      const target = form.querySelector(`[name="${field}"]`)?.closest(".field") || form;
      const node = document.createElement("p");
      node.className = "error js";
      node.setAttribute("role", "alert");
      node.textContent = messages.join(" ");
      target.appendChild(node);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) return showErrors({ file: ["Choose or drop a file first."] });
    if (file.size > maxBytes) {
      return showErrors({ file: [`The file is ${(file.size / 1048576).toFixed(1)} MB; uploads are limited to ${(maxBytes / 1048576).toFixed(0)} MB.`] });
    }
    const request = new XMLHttpRequest();
    request.open("POST", form.action || window.location.href);
    request.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    progress.hidden = false;
    form.querySelector('button[type="submit"]').disabled = true;
    request.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      const percent = Math.round((100 * e.loaded) / e.total);
      bar.style.width = `${percent}%`;
      label.textContent = `Uploading… ${percent}% (${(e.loaded / 1048576).toFixed(1)} of ${(e.total / 1048576).toFixed(1)} MB)`;
    });
    request.addEventListener("load", () => {
      form.querySelector('button[type="submit"]').disabled = false;
      let body = {};
      try { body = JSON.parse(request.responseText); } catch (_) { body = { errors: { file: ["The server did not accept the upload; try again."] } }; }
      if (request.status === 200 && body.redirect) {
        label.textContent = "Uploaded. Validating…";
        window.location.assign(body.redirect);
      } else {
        progress.hidden = true;
        showErrors(body.errors || { file: [`Upload failed (HTTP ${request.status}).`] });
      }
    });
    request.addEventListener("error", () => {
      form.querySelector('button[type="submit"]').disabled = false;
      progress.hidden = true;
      showErrors({ file: ["The connection broke off during the upload; nothing was saved. Try again."] });
    });
    request.send(new FormData(form));
  });
})();
