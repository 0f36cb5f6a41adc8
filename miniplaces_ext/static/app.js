// The page's logic: upload or pick a photo, then fill the panels from /api/... answers.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let photoId = null;
let randomUnavailable = false;

function conv() {
  return document.querySelector('input[name="conv"]:checked').value;
}

function arch() {
  return $("arch").value;
}

// The query string every per-network call carries: which convolutions, which network.
function which() {
  return `conv=${conv()}&arch=${arch()}`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) throw new Error(body.error || `error ${response.status}`);
  return body;
}

function pct(p) {
  return (100 * p).toFixed(1) + " %";
}

function showPrediction(result) {
  $("result-panel").hidden = false;
  const list = $("top5");
  list.replaceChildren();
  for (const entry of result.top) {
    const li = document.createElement("li");
    li.dataset.class = entry.class;
    li.innerHTML = `<span class="name"></span> <span class="prob"></span> <span class="env"></span>
                    <div class="bar"><span></span></div>`;
    li.querySelector(".name").textContent = entry.class;
    li.querySelector(".prob").textContent = pct(entry.probability);
    li.querySelector(".env").textContent = entry.environment || "";
    li.querySelector(".bar span").style.width = pct(entry.probability).replace(" ", "");
    list.append(li);
  }
  $("environment").textContent = result.environment
    ? `${result.environment} (${Math.round(100 * result.outdoor_share)} % of the top 10 are outdoor)` : "";
  const a = result.agreement;
  const other = a.other_conv === "torch" ? "torch's convolutions" : "our convolutions";
  $("agreement").textContent = (a.same_topk ? `✔ ${other} give the same top-5` :
    a.same_top1 ? `${other} give the same top-1 (top-5 order differs)` : `✘ ${other} disagree`) +
    `; largest probability difference ${a.max_abs_probability_difference.toExponential(1)}` +
    ` · ${result.milliseconds[result.conv]} ms on ${info ? info.device : "?"}`;
  $("agreement").className = a.same_topk ? "agree" : "disagree";
  const select = $("cam-class");
  select.replaceChildren();
  for (const entry of result.top) select.append(new Option(entry.class, entry.class));
}

async function loadCam() {
  if (!photoId) return;
  $("cam-panel").hidden = false;
  const name = $("cam-class").value;
  $("cam-caption").textContent = "computing the map…";
  const cam = await api(`/api/cam/${photoId}?class_name=${encodeURIComponent(name)}&${which()}`);
  $("cam-image").src = cam.png;
  $("cam-caption").textContent = `${cam.method === "cam" ? "CAM" : "Grad-CAM"} of ${cam.class} (${pct(cam.probability)})`;
}

async function loadNeighbours() {
  if (!photoId) return;
  $("neighbour-panel").hidden = false;
  const found = await api(`/api/neighbours/${photoId}?${which()}`);
  const box = $("neighbours");
  box.replaceChildren();
  if (found.status !== "ready") {
    const progress = found.status === "indexing" && found.total ? ` (${found.done} of ${found.total})` : "";
    $("neighbour-status").textContent = (found.message || "neighbours are not available") + progress;
    if (found.status === "indexing") setTimeout(loadNeighbours, 2000);
    return;
  }
  $("neighbour-status").textContent = `among ${found.message}`;
  for (const n of found.neighbours) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = n.url;
    img.alt = n.class;
    img.className = "neighbour";
    const caption = document.createElement("figcaption");
    caption.textContent = `${n.class} · ${n.distance.toFixed(1)}`;
    figure.append(img, caption);
    box.append(figure);
  }
}

async function afterPhoto(result, caption) {
  photoId = result.photo_id;
  $("photo").src = `/api/photo/${photoId}`;
  $("photo").hidden = false;
  showPrediction(result);
  setStatus(caption);
  $("dream-panel").hidden = false;
  $("dream-image").hidden = true;
  $("dream-status").textContent = "";
  await Promise.all([loadCam(), loadNeighbours()]);
}

async function busy(work, label = "") {
  showError("");
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  try {
    await work();
  } catch (e) {
    showError(label ? `${label}: ${e.message}` : e.message);
    setStatus("");
  } finally {
    for (const b of document.querySelectorAll("button")) b.disabled = b.id === "random-button" && randomUnavailable;
  }
}

function upload(file) {
  return busy(async () => {
    setStatus(`classifying ${file.name}…`);
    const form = new FormData();
    form.append("file", file);
    const result = await api(`/api/photo?${which()}`, { method: "POST", body: form });
    await afterPhoto(result, `${result.name} (${result.size[0]}×${result.size[1]})`);
  }, file.name);
}

function randomPhoto() {
  return busy(async () => {
    setStatus("picking a val image…");
    const result = await api(`/api/photo/random?${which()}`, { method: "POST" });
    await afterPhoto(result, `${result.name}: labelled ${result.true_class}`);
  });
}

async function reclassify() {
  if (!photoId) return;
  await busy(async () => {
    showPrediction(await api(`/api/classify/${photoId}?${which()}`));
    await Promise.all([loadCam(), loadNeighbours()]);
  });
}

async function startDream(event) {
  event.preventDefault();
  if (!photoId) return;
  $("dream-button").disabled = true;
  $("dream-progress").hidden = false;
  $("dream-progress").value = 0;
  $("dream-status").textContent = "queued…";
  try {
    let job = await api("/api/dream", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        photo_id: photoId, layer: $("dream-layer").value, conv: conv(), arch: arch(),
        octaves: Number($("dream-octaves").value), steps: Number($("dream-steps").value),
      }),
    });
    while (job.state === "queued" || job.state === "running") {
      await new Promise((r) => setTimeout(r, 500));
      job = await api(`/api/dream/${job.job}`);
      $("dream-progress").value = job.progress;
      $("dream-status").textContent = job.state === "queued" ? "waiting for another dream…" :
        `dreaming… ${Math.round(100 * job.progress)} %`;
    }
    if (job.state === "error") throw new Error(job.error);
    $("dream-image").src = job.png;
    $("dream-image").hidden = false;
    $("dream-status").textContent =
      `${arch()} ${job.settings.layer}, ${job.settings.octaves} octaves × ${job.settings.steps} steps`;
  } catch (e) {
    $("dream-status").textContent = "";
    showError(e.message);
  } finally {
    $("dream-button").disabled = false;
    $("dream-progress").hidden = true;
  }
}

// Shows the chosen network: its line under the title and its DeepDream layers.
function showNetwork() {
  const net = info.networks[arch()];
  $("model-line").textContent = `${net.arch} (${net.weights}), ${net.classes.length} scene classes, on ${info.device}`;
  $("dream-layer").replaceChildren();
  for (const layer of net.dream_layers) $("dream-layer").append(new Option(layer, layer));
  $("dream-layer").value = net.default_dream_layer;
}

async function switchNetwork() {
  showNetwork();
  $("dream-image").hidden = true;
  $("dream-status").textContent = "";
  await reclassify();
}

async function init() {
  info = await api("/api/info");
  for (const name of Object.keys(info.networks)) $("arch").append(new Option(name, name));
  $("arch").value = info.arch;
  $("arch-switch").hidden = Object.keys(info.networks).length < 2;
  showNetwork();
  $("upload-hint").textContent = `JPEG, PNG, … up to ${info.max_upload_mb} MB`;
  if (info.gallery.status === "unavailable") {
    randomUnavailable = true;
    $("random-button").disabled = true;
    $("random-button").title = info.gallery.message;
  }
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("file-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";  // choosing the same file again fires "change" again
    if (file) upload(file);
  });
  $("random-button").addEventListener("click", randomPhoto);
  for (const r of document.querySelectorAll('input[name="conv"]')) r.addEventListener("change", reclassify);
  $("arch").addEventListener("change", switchNetwork);
  $("cam-class").addEventListener("change", () => loadCam().catch((e) => showError(e.message)));
  $("dream-form").addEventListener("submit", startDream);
}

init().catch((e) => showError(`cannot reach the server: ${e.message}`));
