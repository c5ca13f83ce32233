// vitkit serve page: pick or drop an image -> POST /v1/classify (top-5 bars) and /v1/explain (overlay PNG).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), input = $("file"), errorBox = $("error"), status = $("status");
  let current = null; // the File being shown
  let overlayUrl = null, previewUrl = null;

  function showError(msg) { errorBox.textContent = msg; errorBox.hidden = false; }
  function clearError() { errorBox.textContent = ""; errorBox.hidden = true; }
  function method() { return document.querySelector('input[name="method"]:checked').value; }

  async function reason(resp) {
    try { const j = await resp.json(); return j.error || resp.statusText; } catch (e) { return resp.statusText; }
  }

  fetch("/v1/model").then((r) => r.ok ? r.json() : null).then((m) => {
    if (!m) { $("model-line").textContent = "The model is not ready yet."; return; }
    const a = m.architecture;
    $("model-line").textContent = `${m.name}: width ${a.width}, depth ${a.depth}, patch ${a.patch_size}, ` +
      `${m.preprocessing.size.join("×")} input, ${m.num_classes} classes, ${m.device}`;
  }).catch(() => { $("model-line").textContent = "The model description could not be read."; });

  function drawBars(preds) {
    const ol = $("bars");
    ol.replaceChildren();
    for (const p of preds) {
      const li = document.createElement("li");
      const pct = (100 * p.score).toFixed(1);
      li.setAttribute("aria-label", `${p.label}: ${pct} percent`);
      const name = document.createElement("span"); name.className = "name"; name.textContent = p.label; name.title = p.label;
      const track = document.createElement("span"); track.className = "track";
      const fill = document.createElement("span"); fill.className = "fill"; fill.style.width = `${Math.max(0.5, 100 * p.score)}%`;
      fill.style.display = "block";
      track.appendChild(fill);
      const val = document.createElement("span"); val.className = "val"; val.textContent = `${pct} %`;
      li.append(name, track, val);
      ol.appendChild(li);
    }
  }

  async function explain(file) {
    const fd = new FormData(); fd.append("file", file);
    const m = method();
    const r = await fetch(`/v1/explain?method=${m}`, { method: "POST", body: fd });
    if (!r.ok) { showError(`Explain failed (${r.status}): ${await reason(r)}`); return; }
    const blob = await r.blob();
    if (overlayUrl) URL.revokeObjectURL(overlayUrl);
    overlayUrl = URL.createObjectURL(blob);
    const img = $("overlay");
    img.src = overlayUrl;
    img.alt = `attention heat-map over the image (${m === "rollout" ? "rollout" : "last layer"})`;
    $("overlay-caption").textContent = r.headers.get("X-Vitkit-Explanation") || "";
    $("overlay-box").hidden = false;
  }

  async function handle(file) {
    if (!file) return;
    current = file;
    clearError();
    $("bars").replaceChildren();
    $("overlay-box").hidden = true;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl;
    $("preview-name").textContent = `${file.name} (${(file.size / 1024).toFixed(1)} KiB)`;
    $("preview-box").hidden = false;
    status.textContent = "Classifying…";
    const fd = new FormData(); fd.append("file", file);
    let r;
    try { r = await fetch("/v1/classify?topk=5", { method: "POST", body: fd }); }
    catch (e) { status.textContent = ""; showError("The service could not be reached."); return; }
    if (!r.ok) {
      status.textContent = "";
      $("preview-box").hidden = true;
      showError(`${file.name} could not be classified (${r.status}): ${await reason(r)}`);
      return;
    }
    const j = await r.json();
    drawBars(j.predictions);
    status.textContent = `Done in ${j.timing.total_ms.toFixed(0)} ms (batch of ${j.timing.batch_size}).`;
    await explain(file);
  }

  input.addEventListener("change", () => handle(input.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) handle(e.dataTransfer.files[0]); });
  document.querySelectorAll('input[name="method"]').forEach((el) =>
    el.addEventListener("change", () => { if (current) { clearError(); explain(current); } }));
})();
