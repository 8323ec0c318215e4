// The labelling page of `imrseg app`: classes and supports, the folder's grid, one image's review
// and correction. It talks only to /app/api (same origin, so the server's cookie goes along) and puts
// every string from there or from the person into the page as text (textContent, setAttribute),
// never as HTML.
"use strict";

const STATES = ["none", "proposed", "accepted", "corrected", "rejected"];
const PAGE_SIZE = 100;
const UNDO_BYTES = 256 * 1024 * 1024;  // the undo history's bound: fewer steps on big images
const COLOUR = /^#[0-9a-fA-F]{6}$/;

const S = {
  state: null,            // the last /app/api/state
  order: "name",
  filter: "all",
  offset: 0,
  total: 0,
  items: [],              // the page of /app/api/images on show
  pageSeq: 0,
  picking: -1,            // the class whose supports a click on a tile adds or removes; -1: none
  uploadTarget: -1,       // the class the file input's files go to
  detail: null,           // the opened image, see openDetail
  detailSeq: 0,
  tool: "brush",
  size: 24,               // brush diameter in screen pixels
  stateTimer: null,
};

const $ = id => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function paint(node, colour) {
  if (COLOUR.test(colour || "")) node.style.backgroundColor = colour;
}

// ---------------------------------------------------------------- messages and the API

let messageTimer = null;

function showMessage(text, kind = "error") {
  const line = $("message");
  line.textContent = String(text);
  line.dataset.kind = kind;
  line.hidden = false;
  clearTimeout(messageTimer);
  if (kind !== "error") messageTimer = setTimeout(() => { line.hidden = true; }, 5000);
}

function clearMessage() {
  $("message").hidden = true;
}

class ApiError extends Error {}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) { /* not JSON: fall back to the status line */ }
  return `${response.status} ${response.statusText}`.trim();
}

async function request(method, path, body) {
  const init = {method, headers: {}};
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    showMessage(`${method} ${path}: the server does not answer (${e.message})`);
    throw new ApiError(e.message);
  }
  if (!response.ok) {
    const message = await errorOf(response);
    showMessage(message);
    throw new ApiError(message);
  }
  return response;
}

async function api(method, path, body) {
  const response = await request(method, path, body);
  return response.status === 204 ? null : response.json();
}

// A picture from the API; `raw`: decoded as it is, no colour management (masks keep their values).
async function bitmap(path, {quiet = false, raw = true} = {}) {
  let response;
  try {
    response = await fetch(path);
  } catch (e) {
    if (!quiet) showMessage(`GET ${path}: the server does not answer (${e.message})`);
    throw new ApiError(e.message);
  }
  if (!response.ok) {
    const message = await errorOf(response);
    if (!quiet) showMessage(message);
    throw new ApiError(message);
  }
  const blob = await response.blob();
  return createImageBitmap(blob, raw ? {colorSpaceConversion: "none", premultiplyAlpha: "none"} : {});
}

// Swallows ApiError (already shown in the message line); other errors are bugs and surface.
function guarded(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (e) {
      if (!(e instanceof ApiError)) {
        showMessage(String(e && e.message || e));
        throw e;
      }
    }
  };
}

// ---------------------------------------------------------------- state, classes and supports

function classes() {
  return S.state ? S.state.classes : [];
}

async function refreshState() {
  setState(await api("GET", "/app/api/state"));
}

// Counts change with every result; the state is fetched again at most twice a second.
function refreshStateSoon() {
  if (S.stateTimer) return;
  S.stateTimer = setTimeout(guarded(async () => {
    S.stateTimer = null;
    await refreshState();
  }), 500);
}

function setState(state) {
  const before = S.state ? JSON.stringify(S.state.classes) : null;
  S.state = state;
  $("folder").textContent = state.folder;
  $("folder").title = `out: ${state.out}`;
  if (JSON.stringify(state.classes) !== before) {
    if (S.picking >= state.classes.length) setPicking(-1);
    renderClasses();
    markSupports();
    renderDetailClasses();
  }
  renderCounts();
  renderProgress(state.running, state.progress);
}

function setClasses(list) {
  S.state.classes = list;
  if (S.picking >= list.length) setPicking(-1);
  renderClasses();
  markSupports();
  renderDetailClasses();
}

function classesBody(list) {
  return {
    classes: list.map(c => ({
      label: c.label,
      prompt: c.prompt && c.prompt !== c.label ? c.prompt : null,
      supports: c.supports.map(s => ({kind: s.kind, ref: s.ref})),
    })),
  };
}

// Every change of the classes goes to the server, which answers with the state it keeps.
async function putClasses(list) {
  try {
    setState(await api("PUT", "/app/api/classes", classesBody(list)));
  } catch (e) {
    renderClasses();  // back to what the server keeps
    throw e;
  }
}

function copyClasses() {
  return classes().map(c => ({...c, supports: c.supports.slice()}));
}

function renderClasses() {
  const box = $("classes");
  box.replaceChildren();
  const list = classes();
  if (!list.length) box.append(el("span", {"class": "hint", "data-testid": "no-class"}, "No class yet: type a label."));
  list.forEach((c, i) => box.append(classElement(c, i)));
}

function classElement(c, i) {
  const node = el("div", {"class": "class", "data-testid": "class", "data-index": i, "data-label": c.label});
  const head = el("div", {"class": "class-head"});
  const swatch = el("span", {"class": "swatch", "data-testid": "swatch", "title": c.color});
  paint(swatch, c.color);
  const label = el("input", {"class": "label-input", "data-testid": "label-input", "aria-label": "class label",
                             "value": c.label, "size": Math.max(4, Math.min(c.label.length, 18))});
  label.addEventListener("change", guarded(async () => {
    const text = label.value.trim();
    if (!text) {
      label.value = c.label;
      showMessage("a class needs a label");
      return;
    }
    const list = copyClasses();
    list[i].label = text;
    await putClasses(list);
  }));
  const pick = el("button", {"type": "button", "class": "pick", "data-testid": "pick", "aria-pressed": S.picking === i,
                             "title": "pick supports: click thumbnails to add or remove them"}, "pick");
  pick.addEventListener("click", () => setPicking(S.picking === i ? -1 : i));
  const upload = el("button", {"type": "button", "class": "upload", "data-testid": "upload",
                               "title": "add image files as supports (NAME_mask.png goes with NAME.* as its drawn mask)"},
                    "files…");
  upload.addEventListener("click", () => {
    S.uploadTarget = i;
    $("upload-input").click();
  });
  const remove = el("button", {"type": "button", "class": "remove", "data-testid": "remove-class",
                               "title": "remove this class", "aria-label": "remove class"}, "×");
  remove.addEventListener("click", guarded(async () => {
    const list = copyClasses();
    list.splice(i, 1);
    if (S.picking === i) setPicking(-1);
    await putClasses(list);
  }));
  head.append(swatch, label, pick, upload, remove);
  const chips = el("div", {"class": "supports", "data-testid": "supports"});
  if (!c.supports.length) chips.append(el("span", {"class": "hint"}, "zero-shot"));
  c.supports.forEach((s, k) => chips.append(supportChip(s, i, k)));
  node.append(head, chips);
  node.addEventListener("dragover", e => {
    e.preventDefault();
    node.classList.add("drop");
  });
  node.addEventListener("dragleave", () => node.classList.remove("drop"));
  node.addEventListener("drop", guarded(async e => {
    e.preventDefault();
    node.classList.remove("drop");
    await uploadSupports(i, Array.from(e.dataTransfer.files));
  }));
  return node;
}

function supportChip(s, i, k) {
  const chip = el("span", {"class": "chip", "data-testid": "support", "data-kind": s.kind, "data-ref": s.ref,
                           "data-drawn": s.drawn ? "true" : "false", "title": `${s.kind}: ${s.name}`});
  if (s.thumb) chip.append(el("img", {"src": new URL(s.thumb, `${location.origin}/app/api/`).href, "alt": ""}));
  chip.append(el("span", {"class": "chip-name"}, s.name));
  if (s.drawn) chip.append(el("span", {"class": "drawn", "data-testid": "drawn", "title": "with its drawn mask"}, "✎"));
  const remove = el("button", {"type": "button", "class": "remove", "data-testid": "remove-support",
                               "aria-label": "remove support", "title": "remove this support"}, "×");
  remove.addEventListener("click", guarded(async () => {
    const list = copyClasses();
    list[i].supports.splice(k, 1);
    await putClasses(list);
  }));
  chip.append(remove);
  return chip;
}

function setPicking(i) {
  S.picking = i;
  document.querySelectorAll("#classes .pick").forEach((b, k) => b.setAttribute("aria-pressed", String(k === i)));
  const hint = $("pick-hint");
  if (i >= 0) {
    hint.textContent = `Click thumbnails to add or remove supports of “${classes()[i].label}” (Escape: done)`;
    hint.hidden = false;
  } else hint.hidden = true;
  document.body.classList.toggle("picking", i >= 0);
  markSupports();
}

async function togglePickedSupport(id) {
  const list = copyClasses();
  const supports = list[S.picking].supports;
  const k = supports.findIndex(s => s.kind === "image" && Number(s.ref) === id);
  if (k >= 0) supports.splice(k, 1);
  else supports.push({kind: "image", ref: id});
  await putClasses(list);
}

function markSupports() {
  const picked = new Set();
  if (S.picking >= 0 && classes()[S.picking]) {
    for (const s of classes()[S.picking].supports) if (s.kind === "image") picked.add(Number(s.ref));
  }
  document.querySelectorAll("#grid .tile").forEach(t => t.classList.toggle("support", picked.has(Number(t.dataset.id))));
}

// Files dropped on a class (or chosen with its "files…"): each image becomes an uploaded support;
// a file named NAME_mask.* among them is the drawn mask of NAME.*.
async function uploadSupports(i, files) {
  if (!files.length) return;
  const stem = name => name.replace(/\.[^.]*$/, "");
  const masks = new Map();
  const images = [];
  for (const f of files) {
    const m = /^(.*)_mask$/i.exec(stem(f.name));
    if (m) masks.set(m[1], f);
    else images.push(f);
  }
  for (const key of masks.keys()) {
    if (!images.some(f => stem(f.name) === key)) {
      showMessage(`${masks.get(key).name}: no image named ${key}.* among the files for its mask`);
      return;
    }
  }
  const added = [];
  for (const f of images) {
    const form = new FormData();
    form.append("file", f, f.name);
    const mask = masks.get(stem(f.name));
    if (mask) form.append("mask", mask, mask.name);
    added.push(await api("POST", "/app/api/upload", form));
  }
  const list = copyClasses();
  if (!list[i]) return;
  list[i].supports.push(...added);
  await putClasses(list);
  showMessage(`${added.length} support${added.length === 1 ? "" : "s"} added to ${list[i].label}`, "info");
}

// ---------------------------------------------------------------- counts, runs and progress

function renderCounts() {
  const box = $("counts");
  box.replaceChildren();
  const counts = (S.state && S.state.counts) || {};
  for (const s of STATES) {
    const item = el("span", {"class": `count state-${s}`, "data-testid": `count-${s}`, "data-count": counts[s] || 0});
    item.append(el("span", {"class": "badge"}, s === "none" ? "not run" : s), el("b", {}, counts[s] || 0));
    box.append(item);
  }
}

function renderProgress(running, progress) {
  $("run").disabled = !!running;
  $("stop").disabled = !running;
  document.body.classList.toggle("running", !!running);
  const bar = $("progress");
  if (progress && progress.total) {
    bar.max = progress.total;
    bar.value = progress.done;
    $("progress-text").textContent = `${progress.done} / ${progress.total}`;
  } else if (!running) {
    bar.max = 1;
    bar.value = 0;
    $("progress-text").textContent = "";
  }
}

async function run() {
  if (!classes().length) {
    showMessage("add a class first: type a label and press Add class");
    return;
  }
  const started = await api("POST", "/app/api/run", {steps: null});
  renderProgress(true, {run: started.run, done: 0, total: started.total});
  showMessage(`run ${started.run}: ${started.total} image${started.total === 1 ? "" : "s"} to compute`, "info");
}

async function stop() {
  const answer = await api("POST", "/app/api/stop");
  if (answer && answer.stopping) showMessage("stopping after the batch in hand", "info");
}

// ---------------------------------------------------------------- the grid

function thumbUrl(item) {
  return `/app/api/thumb/${item.id}?rev=${encodeURIComponent(item.rev)}`;
}

function formatScore(score) {
  return typeof score === "number" ? score.toFixed(3) : "–";
}

async function loadPage() {
  const seq = ++S.pageSeq;
  const query = new URLSearchParams({offset: S.offset, limit: PAGE_SIZE, order: S.order, state: S.filter});
  const page = await api("GET", `/app/api/images?${query}`);
  if (seq !== S.pageSeq) return;
  $("grid").dataset.order = query.get("order");
  $("grid").dataset.filter = query.get("state");
  S.total = page.total;
  S.offset = page.offset;
  S.items = page.items;
  renderGrid();
}

function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren(...S.items.map(tile));
  if (!S.items.length) grid.append(el("p", {"class": "hint"}, S.total ? "Nothing on this page." : "No image matches."));
  const last = Math.min(S.offset + S.items.length, S.total);
  $("page-info").textContent = S.total ? `${S.offset + 1}–${last} of ${S.total}` : "0 images";
  $("page-prev").disabled = S.offset <= 0;
  $("page-next").disabled = last >= S.total;
  markSupports();
  markOpened();
}

function tile(item) {
  const node = el("figure", {"class": "tile", "data-testid": "tile", "tabindex": 0});
  const img = el("img", {"alt": item.name, "loading": "lazy", "decoding": "async"});
  const badge = el("span", {"class": "badge", "data-testid": "tile-state"});
  const score = el("span", {"class": "score", "data-testid": "tile-score"});
  const caption = el("figcaption", {});
  caption.append(badge, score, el("span", {"class": "name", "title": item.name}, item.name));
  node.append(img, caption);
  node.addEventListener("click", guarded(() => clickTile(Number(node.dataset.id))));
  node.addEventListener("keydown", e => {
    if (e.key === "Enter") guarded(() => clickTile(Number(node.dataset.id)))();
  });
  updateTile(node, item);
  return node;
}

function updateTile(node, item) {
  const state = item.state || "none";
  node.dataset.id = item.id;
  node.dataset.state = state;
  node.dataset.rev = item.rev;
  node.dataset.score = item.score === null || item.score === undefined ? "" : item.score;
  const img = node.querySelector("img");
  const src = thumbUrl(item);
  if (img.getAttribute("src") !== src) img.setAttribute("src", src);
  const badge = node.querySelector(".badge");
  badge.textContent = state === "none" ? "not run" : state;
  badge.className = `badge state-${state}`;
  node.querySelector(".score").textContent = formatScore(item.score);
}

function tileOf(id) {
  return document.querySelector(`#grid .tile[data-id="${Number(id)}"]`);
}

async function clickTile(id) {
  if (S.picking >= 0) await togglePickedSupport(id);
  else await openDetail(id);
}

function markOpened() {
  const id = S.detail ? S.detail.id : -1;
  document.querySelectorAll("#grid .tile").forEach(t => t.classList.toggle("opened", Number(t.dataset.id) === id));
}

// A result event: the image's mask or review changed.
function onResult(result) {
  const item = S.items.find(i => i.id === result.id);
  if (item) {
    Object.assign(item, {state: result.state, score: result.score, fraction: result.fraction, rev: result.rev});
    const node = tileOf(result.id);
    if (node) updateTile(node, item);
  }
  const d = S.detail;
  if (d && d.id === result.id) {
    const changed = d.info.rev !== result.rev;
    Object.assign(d.info, {state: result.state, score: result.score, fraction: result.fraction});
    renderDetailHead();
    if (changed) {
      if (d.undo.length) showMessage("this image's mask changed on the server; saving your correction replaces it");
      else guarded(() => openDetail(d.id, true))();
    }
  }
  refreshStateSoon();
}

// ---------------------------------------------------------------- the detail view

// The palette of indexed masks (PASCAL VOC), inverted: colour -> class index.
const PALETTE_INDEX = (() => {
  const index = new Map();
  for (let i = 1; i < 256; i++) {
    const rgb = [0, 0, 0];
    for (let bit = 0; bit < 8; bit++) for (let c = 0; c < 3; c++) rgb[c] |= ((i >> (3 * bit + c)) & 1) << (7 - bit);
    index.set((rgb[0] << 16) | (rgb[1] << 8) | rgb[2], i);
  }
  return index;
})();

function rgbOfColour(colour) {
  if (!COLOUR.test(colour || "")) return [255, 0, 255];
  const n = parseInt(colour.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function pixelsOf(source, w, h) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(source, 0, 0);
  return ctx.getImageData(0, 0, w, h).data;
}

// A mask PNG as class indices: 0/255 (one class) -> 0/1; an indexed PNG (VOC palette) -> its index;
// other greys -> their value.
function decodeMask(source, w, h) {
  const rgba = pixelsOf(source, w, h);
  const labels = new Uint8Array(w * h);
  for (let p = 0, q = 0; p < labels.length; p++, q += 4) {
    const r = rgba[q], g = rgba[q + 1], b = rgba[q + 2];
    if (!(r | g | b)) continue;
    const key = (r << 16) | (g << 8) | b;
    if (PALETTE_INDEX.has(key)) labels[p] = PALETTE_INDEX.get(key);
    else if (r === g && g === b) labels[p] = r === 255 ? 1 : r;
    else labels[p] = 1;
  }
  return labels;
}

function views(info) {
  const list = [];
  if (info.cam) list.push({kind: "cam", name: "CLIP-CAM"});
  for (let t = 1; t <= (info.steps || 0); t++) list.push({kind: "step", t, name: `step ${t} of ${info.steps}`});
  list.push({kind: "mask", name: info.state ? "mask (editable)" : "no mask yet (paint one)"});
  return list;
}

async function openDetail(id, keepView = false) {
  const seq = ++S.detailSeq;
  const info = await api("GET", `/app/api/detail/${id}`);
  const image = await bitmap(`/app/api/image/${id}`, {raw: false});
  if (image.width !== info.width || image.height !== info.height) {
    showMessage(`${info.name} came as ${image.width}x${image.height}, its masks are ${info.width}x${info.height}`);
  }
  let labels = new Uint8Array(info.width * info.height);
  if (info.state) {
    const mask = await bitmap(`/app/api/mask/${id}?rev=${encodeURIComponent(info.rev)}`);
    if (mask.width !== info.width || mask.height !== info.height) {
      showMessage(`the mask of ${info.name} is ${mask.width}x${mask.height}, the image ${info.width}x${info.height}`);
    }
    labels = decodeMask(mask, info.width, info.height);
  }
  if (seq !== S.detailSeq) return;
  const previous = S.detail;
  const list = views(info);
  const d = {
    id, info, image, labels, views: list, undo: [], layers: new Map(),
    w: info.width, h: info.height,
    overlay: document.createElement("canvas"),
    view: list.length - 1,
  };
  if (keepView && previous && previous.id === id) d.view = Math.min(previous.view, list.length - 1);
  d.overlay.width = d.w;
  d.overlay.height = d.h;
  d.overlayCtx = d.overlay.getContext("2d");
  d.overlayData = d.overlayCtx.createImageData(d.w, d.h);
  S.detail = d;
  const canvas = $("detail-canvas");
  canvas.width = d.w;
  canvas.height = d.h;
  $("detail").hidden = false;
  $("detail").dataset.id = id;
  document.body.classList.add("detail-open");
  const slider = $("step-slider");
  slider.max = list.length - 1;
  slider.value = d.view;
  renderDetailHead();
  renderDetailClasses();
  rebuildOverlay();
  fitCanvas();
  markOpened();
  const node = tileOf(id);
  if (node && !keepView) node.scrollIntoView({block: "nearest"});
  await showView(d.view);
}

function closeDetail() {
  S.detailSeq++;
  S.detail = null;
  $("detail").hidden = true;
  document.body.classList.remove("detail-open");
  markOpened();
}

function renderDetailHead() {
  const d = S.detail;
  if (!d) return;
  const state = d.info.state || "none";
  $("detail-name").textContent = d.info.name;
  $("detail-name").title = `${d.info.name} (${d.w}x${d.h})`;
  const badge = $("detail-state");
  badge.textContent = state === "none" ? "not run" : state;
  badge.className = `badge state-${state}`;
  badge.dataset.state = state;
  $("detail-score").textContent = `score ${formatScore(d.info.score)}`;
  $("save").classList.toggle("dirty", d.undo.length > 0);
}

function renderDetailClasses() {
  const select = $("detail-class");
  const before = select.value;
  select.replaceChildren(...classes().map((c, i) => el("option", {"value": i + 1}, c.label)));
  if (before && Number(before) <= classes().length) select.value = before;
  $("detail-class-box").hidden = classes().length <= 1;
  if (S.detail) {
    rebuildOverlay();
    guarded(() => showView(S.detail.view))();
  }
}

function paintIndex() {
  return Math.max(1, Number($("detail-class").value) || 1);
}

function viewLabel() {
  const c = classes()[paintIndex() - 1];
  return c ? c.label : "";
}

function classColours() {
  const colours = [[0, 0, 0]];
  for (const c of classes()) colours.push(rgbOfColour(c.color));
  return colours;
}

function rebuildOverlay() {
  const d = S.detail;
  if (!d) return;
  writeOverlay(0, 0, d.w, d.h);
}

// The mask's colours into the overlay, inside the box [x0, x1) x [y0, y1).
function writeOverlay(x0, y0, x1, y1) {
  const d = S.detail;
  const colours = classColours();
  const data = d.overlayData.data;
  for (let y = y0; y < y1; y++) {
    for (let x = x0, p = y * d.w + x0; x < x1; x++, p++) {
      const v = d.labels[p];
      const q = p * 4;
      if (v) {
        const c = colours[v] || [255, 0, 255];
        data[q] = c[0]; data[q + 1] = c[1]; data[q + 2] = c[2]; data[q + 3] = 255;
      } else data[q + 3] = 0;
    }
  }
  d.overlayCtx.putImageData(d.overlayData, 0, 0, x0, y0, x1 - x0, y1 - y0);
}

// The step masks and the CAM of the class chosen, loaded once per revision.
async function layer(view) {
  const d = S.detail;
  const label = viewLabel();
  const key = `${view.kind}:${view.t || 0}:${label}`;
  if (d.layers.has(key)) return d.layers.get(key);
  const query = `label=${encodeURIComponent(label)}&rev=${encodeURIComponent(d.info.rev)}`;
  const path = view.kind === "cam" ? `/app/api/cam/${d.id}?${query}` : `/app/api/step/${d.id}/${view.t}?${query}`;
  let picture = null;
  try {
    const source = await bitmap(path, {quiet: true});
    if (view.kind === "cam") picture = source;
    else {
      picture = document.createElement("canvas");
      picture.width = d.w;
      picture.height = d.h;
      const rgba = pixelsOf(source, d.w, d.h);
      const ctx = picture.getContext("2d");
      const out = ctx.createImageData(d.w, d.h);
      const c = rgbOfColour((classes()[paintIndex() - 1] || {}).color);
      for (let q = 0; q < rgba.length; q += 4) {
        if (rgba[q]) {
          out.data[q] = c[0]; out.data[q + 1] = c[1]; out.data[q + 2] = c[2]; out.data[q + 3] = 255;
        }
      }
      ctx.putImageData(out, 0, 0);
    }
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    showMessage(`${view.name} of ${label}: ${e.message}`);
  }
  d.layers.set(key, picture);
  return picture;
}

async function showView(index) {
  const d = S.detail;
  if (!d) return;
  d.view = Math.max(0, Math.min(index, d.views.length - 1));
  $("step-slider").value = d.view;
  const view = d.views[d.view];
  $("step-label").textContent = view.name;
  $("step-label").dataset.kind = view.kind;
  $("step-slider").dataset.kind = view.kind;
  d.shown = view.kind === "mask" ? d.overlay : await layer(view);
  if (S.detail === d) draw();
}

function draw() {
  const d = S.detail;
  const ctx = $("detail-canvas").getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(d.image, 0, 0, d.w, d.h);
  if (d.shown) {
    ctx.globalAlpha = Number($("opacity").value) / 100;
    ctx.drawImage(d.shown, 0, 0, d.w, d.h);
    ctx.globalAlpha = 1;
  }
}

// The canvas drawn as large as its box allows, keeping the image's shape.
function fitCanvas() {
  const d = S.detail;
  if (!d) return;
  const box = $("canvas-box").getBoundingClientRect();
  const scale = Math.min(box.width / d.w, box.height / d.h);
  const canvas = $("detail-canvas");
  canvas.style.width = `${Math.max(1, Math.floor(d.w * scale))}px`;
  canvas.style.height = `${Math.max(1, Math.floor(d.h * scale))}px`;
}

// ---------------------------------------------------------------- brush, eraser, undo, save

let stroke = null;

function imagePoint(e) {
  const rect = $("detail-canvas").getBoundingClientRect();
  const d = S.detail;
  return {
    x: (e.clientX - rect.left) * d.w / rect.width,
    y: (e.clientY - rect.top) * d.h / rect.height,
    radius: Math.max(0.5, S.size / 2 * d.w / rect.width),
  };
}

function dab(x, y, radius, value) {
  const d = S.detail;
  const x0 = Math.max(0, Math.floor(x - radius)), x1 = Math.min(d.w, Math.ceil(x + radius) + 1);
  const y0 = Math.max(0, Math.floor(y - radius)), y1 = Math.min(d.h, Math.ceil(y + radius) + 1);
  if (x0 >= x1 || y0 >= y1) return;
  const r2 = radius * radius;
  for (let py = y0; py < y1; py++) {
    const dy = py + 0.5 - y;
    for (let px = x0; px < x1; px++) {
      const dx = px + 0.5 - x;
      if (dx * dx + dy * dy <= r2) d.labels[py * d.w + px] = value;
    }
  }
  writeOverlay(x0, y0, x1, y1);
}

function strokeTo(point) {
  const last = stroke.last;
  const distance = Math.hypot(point.x - last.x, point.y - last.y);
  const n = Math.max(1, Math.ceil(distance / Math.max(0.5, point.radius / 2)));
  for (let k = 1; k <= n; k++) {
    dab(last.x + (point.x - last.x) * k / n, last.y + (point.y - last.y) * k / n, point.radius, stroke.value);
  }
  stroke.last = point;
}

function pushUndo() {
  const d = S.detail;
  d.undo.push(d.labels.slice());
  const depth = Math.max(2, Math.min(50, Math.floor(UNDO_BYTES / d.labels.length)));
  while (d.undo.length > depth) d.undo.shift();
}

async function startStroke(e) {
  const d = S.detail;
  if (!d || e.button !== 0) return;
  e.preventDefault();
  const canvas = $("detail-canvas");
  canvas.setPointerCapture(e.pointerId);
  const point = imagePoint(e);
  stroke = {last: point, value: S.tool === "eraser" ? 0 : paintIndex(), pointer: e.pointerId};
  pushUndo();
  if (d.views[d.view].kind !== "mask") {
    d.view = d.views.length - 1;
    $("step-slider").value = d.view;
    $("step-label").textContent = d.views[d.view].name;
    $("step-label").dataset.kind = "mask";
    $("step-slider").dataset.kind = "mask";
    d.shown = d.overlay;
  }
  dab(point.x, point.y, point.radius, stroke.value);
  draw();
  renderDetailHead();
}

// The brush's outline under the pointer, at the size it paints.
function showCursor(e) {
  const cursor = $("brush-cursor");
  const box = $("canvas-box").getBoundingClientRect();
  cursor.style.width = cursor.style.height = `${S.size}px`;
  cursor.style.left = `${e.clientX - box.left - S.size / 2}px`;
  cursor.style.top = `${e.clientY - box.top - S.size / 2}px`;
  cursor.dataset.tool = S.tool;
  cursor.hidden = false;
}

function moveStroke(e) {
  showCursor(e);
  if (!stroke || e.pointerId !== stroke.pointer || !S.detail) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
  for (const event of events.length ? events : [e]) strokeTo(imagePoint(event));
  draw();
}

function endStroke(e) {
  if (!stroke || e.pointerId !== stroke.pointer) return;
  stroke = null;
}

function undo() {
  const d = S.detail;
  if (!d || !d.undo.length) return;
  d.labels = d.undo.pop();
  rebuildOverlay();
  draw();
  renderDetailHead();
}

function setTool(tool) {
  S.tool = tool;
  $("tool-brush").setAttribute("aria-pressed", String(tool === "brush"));
  $("tool-eraser").setAttribute("aria-pressed", String(tool === "eraser"));
  $("detail-canvas").dataset.tool = tool;
}

function setSize(size) {
  S.size = Math.max(1, Math.min(200, Math.round(size)));
  $("brush-size").value = S.size;
  $("brush-size-text").textContent = `${S.size} px`;
}

// The mask at the image's full size as a PNG: one class white on black, several the class index as grey.
function maskPng() {
  const d = S.detail;
  const canvas = document.createElement("canvas");
  canvas.width = d.w;
  canvas.height = d.h;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(d.w, d.h);
  const several = classes().length > 1;
  for (let p = 0, q = 0; p < d.labels.length; p++, q += 4) {
    const v = several ? d.labels[p] : (d.labels[p] ? 255 : 0);
    out.data[q] = v; out.data[q + 1] = v; out.data[q + 2] = v; out.data[q + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  return new Promise((resolve, reject) => canvas.toBlob(
    blob => blob ? resolve(blob) : reject(new Error("the browser could not encode the mask")), "image/png"));
}

async function save() {
  const d = S.detail;
  if (!d) return;
  if (!d.undo.length) {
    showMessage("nothing to save: no stroke since the mask was loaded or saved", "info");
    return;
  }
  const form = new FormData();
  form.append("mask", await maskPng(), "mask.png");
  const info = await api("POST", `/app/api/correct/${d.id}`, form);
  if (S.detail !== d) return;
  d.info = info;
  d.undo = [];
  d.layers.clear();
  d.views = views(info);
  d.view = d.views.length - 1;
  $("step-slider").max = d.views.length - 1;
  renderDetailHead();
  await showView(d.view);
  showMessage(`correction of ${info.name} saved`, "info");
}

// ---------------------------------------------------------------- review and navigation

async function review(state) {
  const d = S.detail;
  if (!d) return;
  const info = await api("POST", `/app/api/review/${d.id}`, {state});
  if (S.detail !== d) return;
  Object.assign(d.info, {state: info.state, score: info.score, fraction: info.fraction});
  renderDetailHead();
  onResult({id: info.id, state: info.state, score: info.score, fraction: info.fraction, rev: info.rev ?? d.info.rev});
}

async function useAsExample() {
  const d = S.detail;
  if (!d) return;
  if (d.undo.length) await save();
  setState(await api("POST", `/app/api/example/${d.id}`));
  showMessage(`${d.info.name} is now a support with its drawn mask`, "info");
}

// Next / previous on the page in view (and on to the next page); a correction not saved is
// kept unless the key is pressed a second time.
let leaveWarned = false;

async function step(delta) {
  const d = S.detail;
  if (!d) return;
  if (d.undo.length && !leaveWarned) {
    leaveWarned = true;
    showMessage("this correction is not saved: s saves it, pressing the key again drops it");
    return;
  }
  leaveWarned = false;
  let index = S.items.findIndex(i => i.id === d.id);
  if (index < 0) index = delta > 0 ? -1 : S.items.length;
  index += delta;
  if (index >= S.items.length) {
    if (S.offset + S.items.length >= S.total) return;
    S.offset += PAGE_SIZE;
    await loadPage();
    index = 0;
  } else if (index < 0) {
    if (S.offset <= 0) return;
    S.offset = Math.max(0, S.offset - PAGE_SIZE);
    await loadPage();
    index = S.items.length - 1;
  }
  if (S.items[index]) await openDetail(S.items[index].id);
}

// ---------------------------------------------------------------- keys

function typing(target) {
  if (!target || !target.closest) return false;
  if (target.isContentEditable || target.closest("textarea, select")) return true;
  const input = target.closest("input");
  return !!input && !["range", "checkbox", "radio", "button", "submit", "file"].includes(input.type);
}

const KEYS = {
  a: () => review("accepted"),
  r: () => review("rejected"),
  e: useAsExample,
  n: () => step(1),
  ArrowRight: () => step(1),
  p: () => step(-1),
  ArrowLeft: () => step(-1),
  b: () => setTool("brush"),
  x: () => setTool("eraser"),
  "[": () => setSize(S.size > 10 ? S.size / 1.25 : S.size - 1),
  "]": () => setSize(S.size >= 8 ? S.size * 1.25 : S.size + 1),
  s: save,
  Escape: closeDetail,
};

function onKey(e) {
  if (typing(e.target)) return;
  if ((e.ctrlKey || e.metaKey) && !e.altKey && (e.key === "z" || e.key === "Z")) {
    if (S.detail) {
      e.preventDefault();
      undo();
    }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key.startsWith("Arrow") && e.target.closest && e.target.closest("input")) return;  // a slider's own keys
  if (!S.detail) {
    if (e.key === "Escape" && S.picking >= 0) setPicking(-1);
    return;
  }
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const action = KEYS[key];
  if (!action) return;
  e.preventDefault();
  if (key !== "n" && key !== "p" && !key.startsWith("Arrow")) leaveWarned = false;
  guarded(action)();
}

// ---------------------------------------------------------------- server-sent events

function listen() {
  const events = new EventSource("/app/api/events");
  let lost = false;
  events.addEventListener("open", () => {
    if (lost) {
      lost = false;
      clearMessage();
      guarded(async () => {
        await refreshState();
        await loadPage();
      })();
    }
  });
  events.addEventListener("error", () => {
    if (!lost) showMessage("lost the connection to the server; retrying…");
    lost = true;
  });
  events.addEventListener("result", e => onResult(JSON.parse(e.data)));
  events.addEventListener("progress", e => {
    const progress = JSON.parse(e.data);
    renderProgress(true, progress);
  });
  events.addEventListener("run", e => {
    const run = JSON.parse(e.data);
    if (run.status === "started") renderProgress(true, null);
    else {
      if (run.status === "failed") showMessage(`run ${run.run} failed: ${run.error || "no reason given"}`);
      else {
        const seconds = typeof run.seconds === "number" ? ` in ${run.seconds.toFixed(1)} s` : "";
        showMessage(`run ${run.run} ${run.status}${seconds}`, "info");
      }
      guarded(async () => {
        await refreshState();
        if (S.order === "score" || S.filter !== "all") await loadPage();
      })();
    }
    document.body.dataset.run = run.status;
  });
  events.addEventListener("classes", e => {
    const data = JSON.parse(e.data);
    const list = Array.isArray(data) ? data : data.classes;
    if (S.state && JSON.stringify(list) !== JSON.stringify(S.state.classes)) setClasses(list);
  });
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("add-class").addEventListener("submit", guarded(async e => {
    e.preventDefault();
    const input = $("new-label");
    const label = input.value.trim();
    if (!label) {
      showMessage("type a label for the new class");
      return;
    }
    const list = copyClasses();
    list.push({label, prompt: null, supports: []});
    await putClasses(list);
    input.value = "";
  }));
  $("run").addEventListener("click", guarded(run));
  $("stop").addEventListener("click", guarded(stop));
  $("order").addEventListener("change", guarded(async () => {
    S.order = $("order").value;
    S.offset = 0;
    await loadPage();
  }));
  $("state-filter").addEventListener("change", guarded(async () => {
    S.filter = $("state-filter").value;
    S.offset = 0;
    await loadPage();
  }));
  $("page-prev").addEventListener("click", guarded(async () => {
    S.offset = Math.max(0, S.offset - PAGE_SIZE);
    await loadPage();
  }));
  $("page-next").addEventListener("click", guarded(async () => {
    S.offset += PAGE_SIZE;
    await loadPage();
  }));
  $("upload-input").addEventListener("change", guarded(async () => {
    const input = $("upload-input");
    const files = Array.from(input.files);
    input.value = "";
    if (S.uploadTarget >= 0) await uploadSupports(S.uploadTarget, files);
  }));
  $("close").addEventListener("click", closeDetail);
  $("step-slider").addEventListener("input", guarded(() => showView(Number($("step-slider").value))));
  $("detail-class").addEventListener("change", guarded(() => showView(S.detail ? S.detail.view : 0)));
  $("opacity").addEventListener("input", () => S.detail && draw());
  $("tool-brush").addEventListener("click", () => setTool("brush"));
  $("tool-eraser").addEventListener("click", () => setTool("eraser"));
  $("brush-size").addEventListener("input", () => setSize(Number($("brush-size").value)));
  $("undo").addEventListener("click", undo);
  $("save").addEventListener("click", guarded(save));
  $("accept").addEventListener("click", guarded(() => review("accepted")));
  $("reject").addEventListener("click", guarded(() => review("rejected")));
  $("example").addEventListener("click", guarded(useAsExample));
  $("prev").addEventListener("click", guarded(() => step(-1)));
  $("next").addEventListener("click", guarded(() => step(1)));
  $("message").addEventListener("click", clearMessage);
  const canvas = $("detail-canvas");
  canvas.addEventListener("pointerdown", guarded(startStroke));
  canvas.addEventListener("pointermove", moveStroke);
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  canvas.addEventListener("pointerleave", () => { $("brush-cursor").hidden = true; });
  document.addEventListener("keydown", onKey);
  new ResizeObserver(fitCanvas).observe($("canvas-box"));
  setTool("brush");
  setSize(S.size);
}

async function start() {
  wire();
  renderCounts();
  listen();
  await refreshState();
  await loadPage();
  document.body.dataset.ready = "true";
}

guarded(start)();
