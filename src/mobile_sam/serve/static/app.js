// MobileSAM page: a labelling tool. Open images, build labelled objects from points and boxes,
// preview the mask under the mouse, accept "everything" candidates, export datasets.
// Plain JS, no build step, no third-party code; talks to the REST API of the same server.
// Coordinates sent to the API are XY pixels of the uploaded image (boxes XYXY); the canvas
// holds the image at full resolution and CSS scales it, so events are mapped back by the
// ratio between the canvas's pixel size and its displayed size. Masks travel and are stored as
// COCO compressed RLE, the format the export endpoint takes back.
"use strict";

(() => {
  // The same colours as mobile_sam.io.PALETTE (Tableau 20).
  const PALETTE = [
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
    [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
    [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
  ];
  const FILL_ALPHA = 0.45; // mask tint of an object
  const CANDIDATE_ALPHA = 0.3; // "everything" candidates, not yet accepted
  const PREVIEW_ALPHA = 0.35; // the hover preview
  const DRAG_THRESHOLD = 5; // screen pixels before a press becomes a box drag
  const PREVIEW_GAP_MS = 80; // pause between two hover-preview requests
  const HISTORY_LIMIT = 100;
  const RECENT_LABELS = 20;
  const STORAGE_PREFIX = "mobile-sam:";

  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const stage = $("stage");
  const statusLine = $("status");

  // Work on one image (saved in localStorage under its id, the sha256 of the upload):
  //   {objects: [object], selectedId, nextId}
  // object: {id, label, color (palette index), visible, status: "draft" | "done" | "candidate",
  //          prompts: [{type: "point", x, y, label} | {type: "box", box}], multimask,
  //          masks: [COCO RLE], scores: [float], areas: [int], chosen: index into masks}
  const state = {
    images: new Map(), // id -> {id, fileName, width, height, file, picture, work, history}
    current: null, // the shown image record
    overlays: new Map(), // object id -> {key, canvas, x, y}: its mask drawn in its colour
    drag: null, // {start: [x, y], screen: [x, y], current: [x, y], moved: bool}
    seq: 0, // bumped by every change of the work and every image shown: older previews and
    //         uploads are dropped
    predictToken: 0, // numbers the predict requests of objects
    busy: 0,
    saved: [], // work saved by earlier visits: {id, fileName, count}
    pending: new WeakMap(), // object -> token of its latest predict request
    preview: { pending: null, inFlight: false, timer: 0, lastDone: 0, overlay: null, generation: 0 },
  };

  // --------------------------------------------------------------------------- helpers

  function setStatus(text, isError = false) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", isError);
  }

  function setBusy(delta) {
    state.busy = Math.max(0, state.busy + delta);
    document.body.dataset.busy = state.busy > 0 ? "1" : "0";
  }

  // A server started with --token wants "Authorization: Bearer <token>" on /v1: the page
  // asks for it on the first 401 and keeps it for this tab only.
  function withToken(options) {
    const token = sessionStorage.getItem("mobile-sam-token");
    if (!token) return options;
    return { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` } };
  }

  async function request(path, options = {}) {
    let response = await fetch(path, withToken(options));
    if (response.status === 401) {
      const token = window.prompt("This server needs an access token:");
      if (token) {
        sessionStorage.setItem("mobile-sam-token", token.trim());
        response = await fetch(path, withToken(options));
      }
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }

  async function api(path, options = {}) {
    return (await request(path, options)).json();
  }

  function postJson(body, headers = {}) {
    return {
      method: "POST",
      headers: { "Content-Type": "application/json", ...headers },
      body: JSON.stringify(body),
    };
  }

  function work() {
    return state.current ? state.current.work : null;
  }

  function findObject(id) {
    const w = work();
    return w ? w.objects.find((o) => o.id === id) || null : null;
  }

  function selected() {
    const w = work();
    return w && w.selectedId !== null ? findObject(w.selectedId) : null;
  }

  function maskOf(object) {
    return object.masks.length ? object.masks[object.chosen] : null;
  }

  // Event position -> image pixel coordinates, clamped to the image.
  function toImage(event) {
    const rect = canvas.getBoundingClientRect();
    const { width, height } = state.current;
    const x = ((event.clientX - rect.left) * width) / rect.width;
    const y = ((event.clientY - rect.top) * height) / rect.height;
    return [Math.min(Math.max(x, 0), width), Math.min(Math.max(y, 0), height)];
  }

  // The predict request for a list of prompts.
  function promptBody(prompts, multimask) {
    const points = prompts.filter((p) => p.type === "point");
    const boxes = prompts.filter((p) => p.type === "box");
    const body = { multimask_output: multimask };
    if (points.length) {
      body.point_coords = points.map((p) => [p.x, p.y]);
      body.point_labels = points.map((p) => p.label);
    }
    if (boxes.length) body.box = boxes[boxes.length - 1].box; // the latest box wins
    return body;
  }

  function bestIndex(scores) {
    let best = 0;
    scores.forEach((s, i) => { if (s > scores[best]) best = i; });
    return best;
  }

  function base64ToBytes(b64) {
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  // --------------------------------------------------------------------------- masks

  // COCO compressed RLE string -> run lengths (the inverse of mobile_sam.masks.rle_to_coco).
  function cocoCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0;
      let k = 0;
      let more = true;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x += (c & 0x1f) * 2 ** (5 * k); // arithmetic, not bit operators: no 32-bit overflow
        more = (c & 0x20) !== 0;
        p++;
        k++;
        if (!more && (c & 0x10)) x -= 2 ** (5 * k); // sign-extend
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // The foreground runs [start, end) of an RLE, as column-major pixel indices.
  function foregroundRuns(rle) {
    const counts = cocoCounts(rle.counts);
    const runs = [];
    let pos = 0;
    counts.forEach((count, r) => {
      if (r % 2 === 1 && count > 0) runs.push([pos, pos + count]);
      pos += count;
    });
    return runs;
  }

  // A COCO RLE -> {x, y, w, h, data}: the mask cropped to its bounding box (data: w*h bytes,
  // row-major, 1 inside), or null for an empty mask. Cropping keeps many objects cheap.
  function decodeMask(rle) {
    const h = rle.size[0];
    const runs = foregroundRuns(rle);
    if (!runs.length) return null;
    let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1;
    for (const [start, end] of runs) {
      const ca = Math.floor(start / h);
      const cb = Math.floor((end - 1) / h);
      x0 = Math.min(x0, ca);
      x1 = Math.max(x1, cb);
      // A run across a column boundary covers the bottom of one column and the top of the next.
      y0 = Math.min(y0, cb > ca ? 0 : start - ca * h);
      y1 = Math.max(y1, cb > ca ? h - 1 : end - 1 - ca * h);
    }
    const w = x1 - x0 + 1;
    const data = new Uint8Array(w * (y1 - y0 + 1));
    for (const [start, end] of runs) {
      let j = start;
      while (j < end) {
        const x = Math.floor(j / h);
        const stop = Math.min(end, (x + 1) * h);
        for (let y = j - x * h; j < stop; j++, y++) data[(y - y0) * w + (x - x0)] = 1;
      }
    }
    return { x: x0, y: y0, w, h: y1 - y0 + 1, data };
  }

  // Pixels of the mask within `width` pixels of its border (4-neighbour erosion).
  function maskEdge(mask, width) {
    const { w, h } = mask;
    let inner = mask.data;
    for (let step = 0; step < width; step++) {
      const next = new Uint8Array(w * h);
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const i = y * w + x;
          next[i] = inner[i] && x > 0 && x < w - 1 && y > 0 && y < h - 1 &&
            inner[i - 1] && inner[i + 1] && inner[i - w] && inner[i + w] ? 1 : 0;
        }
      }
      inner = next;
    }
    return mask.data.map((v, i) => (v && !inner[i] ? 1 : 0));
  }

  function outlineWidth() {
    return Math.max(1, Math.round(Math.max(state.current.width, state.current.height) / 600));
  }

  // A mask drawn in a colour: translucent inside, an opaque outline `line` pixels wide.
  function maskOverlay(mask, color, alpha, line) {
    const overlay = document.createElement("canvas");
    overlay.width = mask.w;
    overlay.height = mask.h;
    const octx = overlay.getContext("2d");
    const pixels = octx.createImageData(mask.w, mask.h);
    const edge = maskEdge(mask, line);
    const fill = Math.round(alpha * 255);
    for (let i = 0; i < mask.data.length; i++) {
      if (!mask.data[i]) continue;
      const o = i * 4;
      pixels.data[o] = color[0];
      pixels.data[o + 1] = color[1];
      pixels.data[o + 2] = color[2];
      pixels.data[o + 3] = edge[i] ? 255 : fill;
    }
    octx.putImageData(pixels, 0, 0);
    return { canvas: overlay, x: mask.x, y: mask.y };
  }

  // The object's overlay, rebuilt only when its mask or colour changed.
  function objectOverlay(object) {
    const rle = maskOf(object);
    if (!rle) return null;
    const key = `${object.color}|${object.status === "candidate"}|${rle.counts}`;
    const cached = state.overlays.get(object.id);
    if (cached && cached.key === key) return cached;
    const mask = decodeMask(rle);
    const alpha = object.status === "candidate" ? CANDIDATE_ALPHA : FILL_ALPHA;
    const built = mask ? { key, ...maskOverlay(mask, PALETTE[object.color], alpha, outlineWidth()) } : { key, canvas: null };
    state.overlays.set(object.id, built);
    return built;
  }

  // --------------------------------------------------------------------------- storage

  function storageKey(id) {
    return `${STORAGE_PREFIX}work:${id}`;
  }

  function saveWork() {
    if (state.current) saveImage(state.current);
  }

  function saveImage(image) {
    const saved = { fileName: image.fileName, width: image.width, height: image.height, ...image.work };
    try {
      localStorage.setItem(storageKey(image.id), JSON.stringify(saved));
    } catch (error) {
      setStatus(`Cannot save the work in this browser: ${error.message}`, true);
    }
  }

  function loadWork(id) {
    try {
      const saved = JSON.parse(localStorage.getItem(storageKey(id)) || "null");
      if (saved && Array.isArray(saved.objects)) {
        return { objects: saved.objects, selectedId: saved.selectedId ?? null, nextId: saved.nextId || 1 };
      }
    } catch (_) { /* unreadable: start afresh */ }
    return { objects: [], selectedId: null, nextId: 1 };
  }

  // The images with work saved in this browser: {id, fileName, count}, read once at start.
  function savedWorks() {
    const prefix = `${STORAGE_PREFIX}work:`;
    const works = [];
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i) || "";
      if (!key.startsWith(prefix)) continue;
      try {
        const saved = JSON.parse(localStorage.getItem(key));
        const count = saved.objects.filter((o) => o.status !== "candidate").length;
        works.push({ id: key.slice(prefix.length), fileName: String(saved.fileName), count });
      } catch (_) { /* unreadable: not listed */ }
    }
    return works;
  }

  function recentLabels() {
    try {
      const labels = JSON.parse(localStorage.getItem(`${STORAGE_PREFIX}labels`) || "[]");
      return Array.isArray(labels) ? labels.filter((l) => typeof l === "string") : [];
    } catch (_) {
      return [];
    }
  }

  function rememberLabel(label) {
    const labels = [label, ...recentLabels().filter((l) => l !== label)].slice(0, RECENT_LABELS);
    try {
      localStorage.setItem(`${STORAGE_PREFIX}labels`, JSON.stringify(labels));
    } catch (_) { /* the list is a convenience */ }
    renderLabelChoices();
  }

  function defaultLabel() {
    return recentLabels()[0] || "object";
  }

  // --------------------------------------------------------------------------- history

  function remember() {
    const image = state.current;
    image.history.push(JSON.stringify(image.work));
    if (image.history.length > HISTORY_LIMIT) image.history.shift();
    state.seq++;
  }

  function undo() {
    const image = state.current;
    if (!image || !image.history.length) return;
    image.work = JSON.parse(image.history.pop());
    state.seq++;
    clearPreview();
    changed("Undone.");
  }

  // After every change of the work: save it, redraw, rebuild the list.
  function changed(message) {
    saveWork();
    renderList();
    updateControls();
    render();
    if (message) setStatus(message);
  }

  // --------------------------------------------------------------------------- objects

  function unusedColor() {
    const used = new Set(work().objects.map((o) => o.color));
    for (let i = 0; i < PALETTE.length; i++) if (!used.has(i)) return i;
    return work().nextId % PALETTE.length;
  }

  function createObject(fields = {}) {
    const w = work();
    const object = {
      id: w.nextId++, label: defaultLabel(), color: unusedColor(), visible: true,
      status: "draft", prompts: [], multimask: true, masks: [], scores: [], areas: [], chosen: 0,
      ...fields,
    };
    w.objects.push(object);
    return object;
  }

  // "N": finish the current object and start an empty one (an empty draft is reused).
  function newObject() {
    if (!state.current) return;
    const current = selected();
    if (current && current.status === "draft" && !current.prompts.length) return;
    remember();
    if (current && current.status === "draft") current.status = "done";
    work().selectedId = createObject().id;
    changed("New object: click the image to segment it.");
  }

  // The object a click on the image extends: the selected one, else a new draft.
  function targetObject() {
    const current = selected();
    if (current && current.status !== "candidate") return current;
    const object = createObject();
    work().selectedId = object.id;
    return object;
  }

  function addPrompt(prompt) {
    if (!state.current) return;
    clearPreview();
    remember();
    const object = targetObject();
    if (object.status === "done" && !object.prompts.length) object.masks = []; // from "everything"
    object.prompts.push(prompt);
    object.multimask = $("multimask").checked;
    changed();
    predictObject(object);
  }

  // Asks the server for the object's masks. Only the latest request of an object lands, and
  // only on an object still in the work (undo replaces the objects by earlier copies).
  async function predictObject(object) {
    const image = state.current;
    const token = ++state.predictToken;
    state.pending.set(object, token);
    setBusy(1);
    try {
      const path = `/v1/images/${image.id}/predict`;
      const body = { ...promptBody(object.prompts, object.multimask), mask_format: "rle" };
      const result = await api(path, postJson(body));
      if (state.pending.get(object) !== token || !image.work.objects.includes(object)) return;
      const chosen = bestIndex(result.scores);
      Object.assign(object, { masks: result.masks, scores: result.scores, areas: result.areas, chosen });
      if (image === state.current) {
        setStatus(`${describe(object)}: mask ${chosen + 1} of ${result.masks.length}, ` +
                  `score ${result.scores[chosen].toFixed(3)}, ${result.areas[chosen]} pixels.`);
      }
    } catch (error) {
      if (state.pending.get(object) === token) setStatus(error.message, true);
    } finally {
      if (state.pending.get(object) === token) state.pending.delete(object);
      setBusy(-1);
      if (image === state.current) changed();
      else saveImage(image);
    }
  }

  function describe(object) {
    return `Object ${object.id} (${object.label})`;
  }

  // Selecting keeps the list's elements (a label field being focused must stay focused).
  function select(id) {
    const w = work();
    if (!w || w.selectedId === id) return;
    w.selectedId = id;
    clearPreview();
    for (const item of $("objects").children) {
      item.setAttribute("aria-selected", String(item.dataset.id === String(id)));
    }
    saveWork();
    updateControls();
    render();
  }

  function chooseMask(index) {
    const object = selected();
    if (!object || index >= object.masks.length || index === object.chosen) return;
    remember();
    object.chosen = index;
    changed(`${describe(object)}: mask ${index + 1}, score ${object.scores[index].toFixed(3)}.`);
  }

  // "A": a candidate becomes an object; the current object is finished (the next click starts
  // a new one).
  function acceptSelected() {
    const object = selected();
    if (!object || !maskOf(object)) return;
    remember();
    const wasCandidate = object.status === "candidate";
    object.status = "done";
    work().selectedId = null;
    object.label = labelText(object.label);
    rememberLabel(object.label);
    changed(wasCandidate ? `${describe(object)} accepted.` : `${describe(object)} done; click to start the next object.`);
  }

  function deleteObject(id) {
    const object = findObject(id);
    if (!object) return;
    remember();
    const w = work();
    w.objects = w.objects.filter((o) => o.id !== id);
    if (w.selectedId === id) w.selectedId = null;
    state.overlays.delete(id);
    changed(`${describe(object)} removed.`);
  }

  // "Esc": drop a box being dragged; else discard the object being drawn (undo brings it
  // back), or stop refining the selected one.
  function cancelPrompt() {
    if (state.drag) {
      state.drag = null;
      render();
      return;
    }
    clearPreview();
    const object = selected();
    if (!object) return;
    if (object.status === "draft") {
      deleteObject(object.id);
    } else {
      work().selectedId = null;
      changed();
    }
  }

  function setVisible(id, visible) {
    const object = findObject(id);
    if (!object) return;
    object.visible = visible;
    changed();
  }

  // While typing the label is kept as typed; once committed (Enter, leaving the field) it is
  // trimmed, "object" if empty, and offered again in the list of recent labels.
  function setLabel(id, text, commit = false) {
    const object = findObject(id);
    if (!object) return;
    object.label = commit ? labelText(text) : text;
    if (commit) rememberLabel(object.label);
    saveWork();
  }

  function labelText(text) {
    return text.trim() || "object";
  }

  function setCandidates(accept) {
    const w = work();
    const candidates = w.objects.filter((o) => o.status === "candidate");
    if (!candidates.length) return;
    remember();
    if (accept) {
      for (const o of candidates) o.status = "done";
    } else {
      w.objects = w.objects.filter((o) => o.status !== "candidate");
      if (!findObject(w.selectedId)) w.selectedId = null;
    }
    changed(`${candidates.length} candidates ${accept ? "accepted" : "discarded"}.`);
  }

  // --------------------------------------------------------------------------- everything

  function everythingOptions() {
    const number = (id) => Number($(id).value);
    return {
      points_per_side: number("opt-points"),
      pred_iou_thresh: number("opt-iou"),
      stability_score_thresh: number("opt-stability"),
      crop_n_layers: number("opt-crops"),
      min_mask_region_area: number("opt-min-area"),
    };
  }

  // New candidates replace the previous run's (never an accepted or drawn object).
  async function runEverything() {
    const image = state.current;
    if (!image) return;
    setBusy(1);
    $("everything").disabled = true;
    setStatus("Segmenting everything\u2026");
    try {
      const path = `/v1/images/${image.id}/everything`;
      const result = await api(path, postJson(everythingOptions()));
      if (image !== state.current) return;
      remember();
      const w = work();
      w.objects = w.objects.filter((o) => o.status !== "candidate");
      if (!findObject(w.selectedId)) w.selectedId = null;
      // Largest first, so that small masks are drawn on top and stay visible.
      const records = [...result.masks].sort((a, b) => b.area - a.area);
      for (const record of records) {
        createObject({
          status: "candidate", masks: [record.segmentation], scores: [record.predicted_iou],
          areas: [record.area],
        });
      }
      changed(`${records.length} masks found: accept, label or discard the candidates.`);
    } catch (error) {
      if (image === state.current) setStatus(error.message, true);
    } finally {
      setBusy(-1);
      updateControls();
    }
  }

  // --------------------------------------------------------------------------- hover preview

  // At most one preview request in flight, and a pause between two: the decoder runs on the
  // server's cached embedding, but a mouse moves faster than a CPU decodes.
  function schedulePreview(at) {
    state.preview.pending = at;
    pumpPreview();
  }

  function pumpPreview() {
    const preview = state.preview;
    if (preview.inFlight || preview.timer || !preview.pending) return;
    const wait = Math.max(0, preview.lastDone + PREVIEW_GAP_MS - performance.now());
    preview.timer = setTimeout(sendPreview, wait);
  }

  function clearPreview() {
    const preview = state.preview;
    clearTimeout(preview.timer);
    preview.timer = 0;
    preview.pending = null;
    preview.generation++;
    if (preview.overlay) {
      preview.overlay = null;
      render();
    }
  }

  // The mask a click at `at` would give: the target object's prompts plus that point.
  function previewBody(at) {
    const current = selected();
    const base = current && current.status !== "candidate" ? current : null;
    const prompts = [...(base ? base.prompts : []), { type: "point", x: at[0], y: at[1], label: 1 }];
    const color = base ? base.color : unusedColor();
    return { body: { ...promptBody(prompts, $("multimask").checked), mask_format: "rle" }, color };
  }

  async function sendPreview() {
    const preview = state.preview;
    preview.timer = 0;
    const at = preview.pending;
    const image = state.current;
    preview.pending = null;
    if (!at || !image || state.busy || state.drag) return;
    const seq = state.seq;
    const generation = preview.generation;
    const { body, color } = previewBody(at);
    preview.inFlight = true;
    try {
      const path = `/v1/images/${image.id}/predict`;
      const result = await api(path, postJson(body, { "X-Purpose": "preview" }));
      if (seq !== state.seq || generation !== preview.generation || image !== state.current) return;
      const mask = decodeMask(result.masks[bestIndex(result.scores)]);
      // A one-pixel outline: the preview is redrawn as the mouse moves, keep it cheap.
      preview.overlay = mask ? maskOverlay(mask, PALETTE[color], PREVIEW_ALPHA, 1) : null;
      render();
    } catch (_) {
      // A preview is optional: a failed one just shows nothing.
    } finally {
      preview.inFlight = false;
      preview.lastDone = performance.now();
      pumpPreview();
    }
  }

  // --------------------------------------------------------------------------- drawing

  function render() {
    const image = state.current;
    if (!image || !image.picture) return;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(image.picture, 0, 0, image.width, image.height);
    const scale = Math.max(image.width, image.height) / 800;
    const line = Math.max(2, Math.round(2 * scale));
    const current = selected();
    for (const object of image.work.objects) {
      if (!object.visible) continue;
      const overlay = objectOverlay(object);
      if (overlay && overlay.canvas) ctx.drawImage(overlay.canvas, overlay.x, overlay.y);
    }
    const preview = state.preview.overlay;
    if (preview) ctx.drawImage(preview.canvas, preview.x, preview.y);
    for (const object of image.work.objects) {
      if (!object.visible) continue;
      const boxes = object.prompts.filter((p) => p.type === "box");
      if (boxes.length) drawBox(boxes[boxes.length - 1].box, rgb(PALETTE[object.color]), line);
    }
    if (state.drag && state.drag.moved) {
      const [x0, y0] = state.drag.start;
      const [x1, y1] = state.drag.current;
      drawBox([x0, y0, x1, y1], "#ffffff", line, [6 * scale, 4 * scale]);
    }
    if (current) drawPoints(current.prompts, Math.max(4, Math.round(6 * scale)));
    canvas.dataset.renders = String(Number(canvas.dataset.renders || 0) + 1);
  }

  function rgb(color) {
    return `rgb(${color[0]}, ${color[1]}, ${color[2]})`;
  }

  function drawBox(box, color, line, dash = []) {
    const [x0, y0, x1, y1] = box;
    ctx.save();
    ctx.setLineDash(dash);
    ctx.lineWidth = line;
    ctx.strokeStyle = color;
    ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    ctx.restore();
  }

  function drawPoints(prompts, radius) {
    for (const p of prompts) {
      if (p.type !== "point") continue;
      ctx.beginPath();
      ctx.arc(p.x, p.y, radius, 0, 2 * Math.PI);
      ctx.fillStyle = p.label === 1 ? "#00c853" : "#ff1744";
      ctx.fill();
      ctx.lineWidth = Math.max(1, radius / 3);
      ctx.strokeStyle = "#ffffff";
      ctx.stroke();
    }
  }

  // --------------------------------------------------------------------------- sidebar

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    Object.assign(node, props);
    node.append(...children);
    return node;
  }

  function objectItem(object, isSelected) {
    const swatch = el("span", { className: "swatch", title: `Colour ${object.color + 1}` });
    swatch.style.background = rgb(PALETTE[object.color]);
    const label = el("input", {
      className: "label", value: object.label, type: "text", maxLength: 200,
      title: "Label", ariaLabel: `Label of object ${object.id}`,
    });
    label.setAttribute("list", "recent-labels");
    label.addEventListener("input", () => setLabel(object.id, label.value));
    label.addEventListener("change", () => {
      setLabel(object.id, label.value, true);
      label.value = object.label;
    });
    label.addEventListener("focus", () => select(object.id));
    const visible = el("input", { type: "checkbox", className: "visible", checked: object.visible,
                                  title: "Visible", ariaLabel: `Show object ${object.id}` });
    visible.addEventListener("change", () => setVisible(object.id, visible.checked));
    const remove = el("button", { type: "button", className: "delete", textContent: "\u00d7",
                                  title: "Remove (Delete)", ariaLabel: `Remove object ${object.id}` });
    remove.addEventListener("click", () => deleteObject(object.id));
    const score = object.scores.length ? object.scores[object.chosen].toFixed(2) : "\u2013";
    const meta = el("span", { className: "meta", textContent: object.status === "candidate" ? `candidate ${score}` : score });
    const children = [swatch, label, meta, visible];
    if (object.status === "candidate") {
      const accept = el("button", { type: "button", className: "accept", textContent: "\u2713",
                                    title: "Accept (A)", ariaLabel: `Accept object ${object.id}` });
      accept.addEventListener("click", () => { select(object.id); acceptSelected(); });
      children.push(accept);
    }
    children.push(remove);
    const item = el("li", { className: `object ${object.status}` }, children);
    item.dataset.id = String(object.id);
    item.setAttribute("aria-selected", String(isSelected));
    item.addEventListener("click", (event) => {
      if (event.target === item || event.target === swatch || event.target === meta) select(object.id);
    });
    return item;
  }

  function renderList() {
    const w = work();
    const objects = w ? w.objects : [];
    // Drawn objects first, candidates after them.
    const ordered = [...objects.filter((o) => o.status !== "candidate"), ...objects.filter((o) => o.status === "candidate")];
    // A label being typed keeps its focus and caret when a response rebuilds the list.
    const typing = document.activeElement;
    const typingId = typing && typing.classList.contains("label") ? typing.closest(".object").dataset.id : null;
    const caret = typingId ? [typing.selectionStart, typing.selectionEnd] : null;
    $("objects").replaceChildren(...ordered.map((o) => objectItem(o, w.selectedId === o.id)));
    const again = typingId && $("objects").querySelector(`.object[data-id="${typingId}"] .label`);
    if (again) {
      again.focus();
      again.setSelectionRange(...caret);
    }
    $("no-objects").hidden = objects.length > 0;
    const candidates = objects.length - objects.filter((o) => o.status !== "candidate").length;
    $("candidate-actions").hidden = candidates === 0;
    $("candidate-count").textContent = `${candidates} candidate${candidates === 1 ? "" : "s"}`;
    renderStrip();
  }

  function renderLabelChoices() {
    $("recent-labels").replaceChildren(...recentLabels().map((l) => el("option", { value: l })));
  }

  function renderStrip() {
    const buttons = [...state.images.values()].map((image) => {
      const count = image.work.objects.filter((o) => o.status !== "candidate").length;
      const button = el("button", { type: "button", textContent: `${image.fileName} (${count})`,
                                    title: `${image.width}\u00d7${image.height}` });
      button.setAttribute("aria-current", String(image === state.current));
      button.addEventListener("click", () => switchTo(image));
      return button;
    });
    // Work saved by an earlier visit: the file itself must be opened again.
    const earlier = state.saved.filter((w) => !state.images.has(w.id)).map((w) => {
      const button = el("button", { type: "button", className: "saved", textContent: `${w.fileName} (${w.count})`,
                                    title: "Saved work: open this file again to continue it" });
      button.addEventListener("click", () => $("file-input").click());
      return button;
    });
    $("images").replaceChildren(...buttons, ...earlier);
  }

  function exportable(image) {
    return image.work.objects.filter((o) => o.status !== "candidate" && maskOf(o));
  }

  function updateControls() {
    const image = state.current;
    const object = selected();
    $("undo").disabled = !image || !image.history.length;
    $("everything").disabled = !image;
    $("new-object").disabled = !image;
    $("download-png").disabled = !object || !object.prompts.length || !maskOf(object);
    const anything = [...state.images.values()].some((i) => exportable(i).length);
    for (const id of ["export-coco", "export-yolo", "export-labelme"]) $(id).disabled = !anything;
    const choice = $("mask-choice");
    choice.replaceChildren();
    if (object && object.masks.length > 1) {
      object.scores.forEach((score, i) => {
        const b = el("button", { type: "button", textContent: `${i + 1}: ${score.toFixed(2)}`,
                                 title: `Mask ${i + 1} (key ${i + 1})` });
        b.setAttribute("role", "radio");
        b.setAttribute("aria-checked", String(i === object.chosen));
        b.addEventListener("click", () => chooseMask(i));
        choice.append(b);
      });
    }
  }

  // --------------------------------------------------------------------------- downloads

  function download(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function stem(name) {
    return name.replace(/\.[^.]*$/, "") || "image";
  }

  // The PNG of the selected object's chosen mask, as the server encodes it.
  async function downloadPng() {
    const object = selected();
    const image = state.current;
    if (!object || !object.prompts.length) return;
    setBusy(1);
    try {
      const path = `/v1/images/${image.id}/predict`;
      const body = { ...promptBody(object.prompts, object.multimask), mask_format: "png" };
      const result = await api(path, postJson(body));
      const bytes = base64ToBytes(result.masks[object.chosen]);
      download(new Blob([bytes], { type: "image/png" }), `${stem(image.fileName)}_${object.label}_mask.png`);
    } catch (error) {
      setStatus(error.message, true);
    } finally {
      setBusy(-1);
    }
  }

  // A file name not in `used` (two uploads may share a name): "a.png", "a_2.png", ...
  function uniqueName(name, used) {
    const [, base, suffix] = /^(.*?)(\.[^.]*)?$/.exec(name);
    let unique = name;
    for (let n = 2; used.has(unique); n++) unique = `${base}_${n}${suffix || ""}`;
    used.add(unique);
    return unique;
  }

  // The export request: every image of the tab with objects, each object's chosen mask.
  function exportImages() {
    const used = new Set();
    const images = [];
    for (const image of state.images.values()) {
      const objects = exportable(image);
      if (!objects.length) continue;
      images.push({
        file_name: uniqueName(image.fileName, used), width: image.width, height: image.height,
        objects: objects.map((o) => ({ label: labelText(o.label), mask: maskOf(o), score: o.scores[o.chosen] ?? null })),
      });
    }
    return images;
  }

  // The file name of a Content-Disposition: the exact one (filename*) if given.
  function attachmentName(response) {
    const disposition = response.headers.get("Content-Disposition") || "";
    const exact = /filename\*=UTF-8''([^;]+)/.exec(disposition);
    if (exact) return decodeURIComponent(exact[1]);
    const plain = /filename="([^"]+)"/.exec(disposition);
    return plain ? plain[1] : null;
  }

  async function exportDataset(format) {
    const images = exportImages();
    if (!images.length) return;
    setBusy(1);
    try {
      const path = `/v1/export/${format}`;
      const response = await request(path, postJson({ images }));
      download(await response.blob(), attachmentName(response) || `${format}_dataset`);
      const count = images.reduce((n, i) => n + i.objects.length, 0);
      setStatus(`Exported ${count} objects of ${images.length} image${images.length === 1 ? "" : "s"} (${format}).`);
    } catch (error) {
      setStatus(error.message, true);
    } finally {
      setBusy(-1);
    }
  }

  // --------------------------------------------------------------------------- images

  async function upload(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    return api("/v1/images", { method: "POST", body: form });
  }

  async function openFile(file) {
    if (!file) return;
    const seq = ++state.seq;
    setBusy(1);
    setStatus(`Uploading ${file.name} and computing its embedding\u2026`);
    try {
      const info = await upload(file);
      let image = state.images.get(info.id);
      if (!image) {
        let picture;
        try {
          picture = await createImageBitmap(file);
        } catch (_) {
          throw new Error(`the browser cannot display ${file.name}`);
        }
        image = {
          id: info.id, fileName: file.name, width: info.width, height: info.height, file, picture,
          work: loadWork(info.id), history: [],
        };
        state.images.set(info.id, image);
      }
      if (seq !== state.seq) return;
      show(image);
      const kept = image.work.objects.length;
      setStatus(`${file.name}: ${info.width}\u00d7${info.height}. ` +
                (kept ? `${kept} saved object${kept === 1 ? "" : "s"} restored.` : "Click to add points, drag for a box."));
    } catch (error) {
      if (seq === state.seq) setStatus(error.message, true);
    } finally {
      setBusy(-1);
      updateControls();
    }
  }

  function show(image) {
    clearPreview();
    state.current = image;
    state.overlays.clear();
    state.seq++;
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.hidden = false;
    stage.classList.remove("empty");
    renderList();
    updateControls();
    render();
  }

  // Another image of this tab: uploaded again, since the server may have evicted it (a cached
  // upload only costs the transfer).
  async function switchTo(image) {
    if (image === state.current) return;
    show(image);
    setStatus(`${image.fileName}: ${image.width}\u00d7${image.height}.`);
    setBusy(1);
    try {
      await upload(image.file);
    } catch (error) {
      setStatus(error.message, true);
    } finally {
      setBusy(-1);
    }
  }

  // --------------------------------------------------------------------------- events

  canvas.addEventListener("pointerdown", (event) => {
    // Ctrl+click is a right-click on macOS: the contextmenu handler adds that point.
    if (event.button !== 0 || event.ctrlKey || !state.current) return;
    clearPreview();
    canvas.setPointerCapture(event.pointerId);
    const at = toImage(event);
    state.drag = { start: at, current: at, screen: [event.clientX, event.clientY], moved: false };
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!state.current) return;
    const drag = state.drag;
    if (!drag) {
      schedulePreview(toImage(event));
      return;
    }
    drag.current = toImage(event);
    const dx = event.clientX - drag.screen[0];
    const dy = event.clientY - drag.screen[1];
    if (!drag.moved && Math.hypot(dx, dy) >= DRAG_THRESHOLD) drag.moved = true;
    if (drag.moved) render();
  });

  canvas.addEventListener("pointerup", (event) => {
    const drag = state.drag;
    if (!drag || event.button !== 0) return;
    state.drag = null;
    if (drag.moved) {
      const [xa, ya] = drag.start;
      const [xb, yb] = toImage(event);
      addPrompt({ type: "box", box: [Math.min(xa, xb), Math.min(ya, yb), Math.max(xa, xb), Math.max(ya, yb)] });
    } else {
      const [x, y] = drag.start;
      addPrompt({ type: "point", x, y, label: event.shiftKey ? 0 : 1 });
    }
  });

  canvas.addEventListener("pointercancel", () => { state.drag = null; render(); });
  canvas.addEventListener("pointerleave", () => { if (!state.drag) clearPreview(); });

  canvas.addEventListener("contextmenu", (event) => {
    event.preventDefault();
    if (!state.current) return;
    const [x, y] = toImage(event);
    addPrompt({ type: "point", x, y, label: 0 });
  });

  $("file-input").addEventListener("change", async (event) => {
    for (const file of [...event.target.files]) await openFile(file);
    event.target.value = "";
  });

  for (const name of ["dragenter", "dragover"]) {
    stage.addEventListener(name, (event) => {
      event.preventDefault();
      stage.classList.add("dragover");
    });
  }
  stage.addEventListener("dragleave", () => stage.classList.remove("dragover"));
  // A file dropped next to the stage must not make the browser navigate away to it.
  for (const name of ["dragover", "drop"]) {
    window.addEventListener(name, (event) => event.preventDefault());
  }
  stage.addEventListener("drop", async (event) => {
    event.preventDefault();
    stage.classList.remove("dragover");
    const files = event.dataTransfer ? [...event.dataTransfer.files] : [];
    for (const file of files) await openFile(file);
  });

  const KEYS = {
    n: newObject,
    a: acceptSelected,
    Escape: cancelPrompt,
    Delete: () => { const o = selected(); if (o) deleteObject(o.id); },
    1: () => chooseMask(0),
    2: () => chooseMask(1),
    3: () => chooseMask(2),
  };
  KEYS.Backspace = KEYS.Delete;

  // Keys typed into a text field are text, not shortcuts (a checkbox with focus is not one).
  function isTyping(target) {
    if (target instanceof HTMLTextAreaElement) return true;
    return target instanceof HTMLInputElement && !["checkbox", "radio", "button", "file"].includes(target.type);
  }

  document.addEventListener("keydown", (event) => {
    if (isTyping(event.target)) {
      if (event.key === "Escape" || event.key === "Enter") event.target.blur();
      return;
    }
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || !state.current) return;
    const action = KEYS[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });

  $("undo").addEventListener("click", undo);
  $("new-object").addEventListener("click", newObject);
  $("accept-all").addEventListener("click", () => setCandidates(true));
  $("discard-all").addEventListener("click", () => setCandidates(false));
  $("everything").addEventListener("click", runEverything);
  $("download-png").addEventListener("click", downloadPng);
  $("export-coco").addEventListener("click", () => exportDataset("coco"));
  $("export-yolo").addEventListener("click", () => exportDataset("yolo"));
  $("export-labelme").addEventListener("click", () => exportDataset("labelme"));

  renderLabelChoices();
  updateControls();
  state.saved = savedWorks();
  renderStrip();
  const saved = state.saved.length;
  if (saved) setStatus(`Saved work for ${saved} image${saved === 1 ? "" : "s"} in this browser: open the same file again to continue.`);
})();
