// MobileSAM page: upload an image, prompt it with points and boxes, show the masks.
// Plain JS, no build step, no third-party code; talks to the REST API of the same server.
// Coordinates sent to the API are XY pixels of the uploaded image (boxes XYXY); the canvas
// holds the image at full resolution and CSS scales it, so events are mapped back by the
// ratio between the canvas's pixel size and its displayed size.
"use strict";

(() => {
  // The same colours as mobile_sam.io.PALETTE (Tableau 20).
  const PALETTE = [
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
    [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
    [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
  ];
  const PROMPT_COLOR = [30, 144, 255];
  const MASK_ALPHA = 0.5;
  const DRAG_THRESHOLD = 5; // screen pixels before a press becomes a box drag

  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const stage = $("stage");
  const statusLine = $("status");

  const state = {
    imageId: null,
    fileName: "image",
    width: 0,
    height: 0,
    picture: null, // ImageBitmap of the upload
    actions: [], // {type: "point", x, y, label} | {type: "box", box: [x0, y0, x1, y1]}
    result: null, // last predict response (PNG masks)
    selected: 0,
    everything: null, // last everything response
    overlay: null, // canvas with the current masks, same size as the image
    drag: null, // {start: [x, y], screen: [x, y], current: [x, y], moved: bool}
    seq: 0, // request counter: responses to superseded requests are dropped
    busy: 0,
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

  async function api(path, options = {}) {
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
    return response.json();
  }

  // Event position -> image pixel coordinates, clamped to the image.
  function toImage(event) {
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) * state.width) / rect.width;
    const y = ((event.clientY - rect.top) * state.height) / rect.height;
    return [Math.min(Math.max(x, 0), state.width), Math.min(Math.max(y, 0), state.height)];
  }

  function prompt() {
    const points = state.actions.filter((a) => a.type === "point");
    const boxes = state.actions.filter((a) => a.type === "box");
    const body = { multimask_output: $("multimask").checked };
    if (points.length) {
      body.point_coords = points.map((p) => [p.x, p.y]);
      body.point_labels = points.map((p) => p.label);
    }
    if (boxes.length) body.box = boxes[boxes.length - 1].box; // the latest box wins
    return body;
  }

  function base64ToBytes(b64) {
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

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

  function newOverlay() {
    const overlay = document.createElement("canvas");
    overlay.width = state.width;
    overlay.height = state.height;
    return overlay;
  }

  // --------------------------------------------------------------------------- drawing

  function render() {
    if (!state.picture) return;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(state.picture, 0, 0, state.width, state.height);
    if (state.overlay) ctx.drawImage(state.overlay, 0, 0);
    const scale = Math.max(state.width, state.height) / 800;
    const line = Math.max(2, Math.round(2 * scale));
    for (const action of state.actions) {
      if (action.type === "box") drawBox(action.box, "#1e90ff", line);
    }
    if (state.drag && state.drag.moved) {
      const [x0, y0] = state.drag.start;
      const [x1, y1] = state.drag.current;
      drawBox([x0, y0, x1, y1], "#ffffff", line, [6 * scale, 4 * scale]);
    }
    const radius = Math.max(4, Math.round(6 * scale));
    for (const action of state.actions) {
      if (action.type !== "point") continue;
      ctx.beginPath();
      ctx.arc(action.x, action.y, radius, 0, 2 * Math.PI);
      ctx.fillStyle = action.label === 1 ? "#00c853" : "#ff1744";
      ctx.fill();
      ctx.lineWidth = Math.max(1, radius / 3);
      ctx.strokeStyle = "#ffffff";
      ctx.stroke();
    }
    canvas.dataset.renders = String(Number(canvas.dataset.renders || 0) + 1);
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

  // One mask from the server's PNG (255 inside) -> a coloured overlay canvas.
  async function overlayFromPng(b64) {
    const bitmap = await createImageBitmap(new Blob([base64ToBytes(b64)], { type: "image/png" }));
    const overlay = newOverlay();
    const octx = overlay.getContext("2d");
    octx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const pixels = octx.getImageData(0, 0, overlay.width, overlay.height);
    const data = pixels.data;
    const alpha = Math.round(MASK_ALPHA * 255);
    for (let i = 0; i < data.length; i += 4) {
      if (data[i] > 127) {
        data[i] = PROMPT_COLOR[0];
        data[i + 1] = PROMPT_COLOR[1];
        data[i + 2] = PROMPT_COLOR[2];
        data[i + 3] = alpha;
      } else {
        data[i + 3] = 0;
      }
    }
    octx.putImageData(pixels, 0, 0);
    return overlay;
  }

  // Every mask of an "everything" run, largest first so that small ones stay visible.
  function overlayFromRecords(records) {
    const overlay = newOverlay();
    const octx = overlay.getContext("2d");
    const pixels = octx.createImageData(overlay.width, overlay.height);
    const data = pixels.data;
    const w = overlay.width;
    const h = overlay.height;
    const alpha = Math.round(0.6 * 255);
    const order = records.map((_, i) => i).sort((a, b) => records[b].area - records[a].area);
    order.forEach((index, rank) => {
      const color = PALETTE[rank % PALETTE.length];
      const counts = cocoCounts(records[index].segmentation.counts);
      let pos = 0; // column-major pixel index
      for (let r = 0; r < counts.length; r++) {
        const end = pos + counts[r];
        if (r % 2 === 1) {
          for (let j = pos; j < end; j++) {
            const x = (j / h) | 0;
            const y = j - x * h;
            const o = (y * w + x) * 4;
            data[o] = color[0];
            data[o + 1] = color[1];
            data[o + 2] = color[2];
            data[o + 3] = alpha;
          }
        }
        pos = end;
      }
    });
    octx.putImageData(pixels, 0, 0);
    return overlay;
  }

  // --------------------------------------------------------------------------- controls

  function updateControls() {
    const hasImage = state.imageId !== null;
    $("undo").disabled = !state.actions.length;
    $("clear").disabled = !state.actions.length && !state.everything;
    $("everything").disabled = !hasImage;
    $("download-png").disabled = !state.result;
    $("download-coco").disabled = !state.result && !state.everything;
    const choice = $("mask-choice");
    choice.replaceChildren();
    if (state.result && state.result.masks.length > 1) {
      state.result.scores.forEach((score, i) => {
        const b = document.createElement("button");
        b.type = "button";
        b.setAttribute("role", "radio");
        b.setAttribute("aria-checked", String(i === state.selected));
        b.textContent = `Mask ${i + 1} (${score.toFixed(2)})`;
        b.addEventListener("click", () => selectMask(i));
        choice.append(b);
      });
    }
  }

  async function selectMask(index) {
    if (!state.result) return;
    state.selected = index;
    state.overlay = await overlayFromPng(state.result.masks[index]);
    updateControls();
    render();
  }

  async function refresh() {
    const seq = ++state.seq;
    state.everything = null;
    if (!state.actions.length) {
      state.result = null;
      state.overlay = null;
      updateControls();
      render();
      setStatus("Click to add points, drag for a box.");
      return;
    }
    setBusy(1);
    try {
      const result = await api(`/v1/images/${state.imageId}/predict`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...prompt(), mask_format: "png" }),
      });
      if (seq !== state.seq) return; // a newer action superseded this one
      state.result = result;
      let best = 0;
      result.scores.forEach((s, i) => { if (s > result.scores[best]) best = i; });
      state.selected = best;
      state.overlay = await overlayFromPng(result.masks[best]);
      if (seq !== state.seq) return;
      setStatus(`Mask ${best + 1} of ${result.masks.length}: score ${result.scores[best].toFixed(3)}, ` +
                `${result.areas[best]} pixels.`);
    } catch (error) {
      if (seq === state.seq) setStatus(error.message, true);
    } finally {
      setBusy(-1);
      if (seq === state.seq) {
        updateControls();
        render();
      }
    }
  }

  function addAction(action) {
    if (!state.imageId) return;
    state.actions.push(action);
    refresh();
  }

  async function runEverything() {
    if (!state.imageId) return;
    const seq = ++state.seq;
    const number = (id) => Number($(id).value);
    const options = {
      points_per_side: number("opt-points"),
      pred_iou_thresh: number("opt-iou"),
      stability_score_thresh: number("opt-stability"),
      crop_n_layers: number("opt-crops"),
      min_mask_region_area: number("opt-min-area"),
    };
    setBusy(1);
    $("everything").disabled = true;
    setStatus("Segmenting everything\u2026");
    try {
      const result = await api(`/v1/images/${state.imageId}/everything`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(options),
      });
      if (seq !== state.seq) return;
      state.actions = [];
      state.result = null;
      state.everything = result;
      state.overlay = overlayFromRecords(result.masks);
      setStatus(`${result.masks.length} masks found.`);
    } catch (error) {
      if (seq === state.seq) setStatus(error.message, true);
    } finally {
      setBusy(-1);
      if (seq === state.seq) {
        updateControls();
        render();
      }
    }
  }

  function download(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function stem() {
    return state.fileName.replace(/\.[^.]*$/, "") || "image";
  }

  function downloadPng() {
    if (!state.result) return;
    const bytes = base64ToBytes(state.result.masks[state.selected]);
    download(new Blob([bytes], { type: "image/png" }), `${stem()}_mask.png`);
  }

  async function downloadCoco() {
    let records;
    if (state.everything) {
      records = state.everything.masks;
    } else if (state.result) {
      // The prompt's masks, as COCO RLE this time.
      setBusy(1);
      try {
        const rle = await api(`/v1/images/${state.imageId}/predict`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ ...prompt(), mask_format: "rle" }),
        });
        records = rle.masks.map((segmentation, i) => {
          const [x0, y0, x1, y1] = rle.boxes[i];
          return {
            segmentation, area: rle.areas[i], bbox: [x0, y0, x1 - x0, y1 - y0],
            predicted_iou: rle.scores[i],
          };
        });
      } catch (error) {
        setStatus(error.message, true);
        return;
      } finally {
        setBusy(-1);
      }
    } else {
      return;
    }
    const coco = {
      info: { description: "Masks from MobileSAM" },
      images: [{ id: 1, file_name: state.fileName, width: state.width, height: state.height }],
      categories: [{ id: 1, name: "object" }],
      annotations: records.map((r, i) => ({ id: i + 1, image_id: 1, category_id: 1, iscrowd: 0, ...r })),
    };
    download(new Blob([JSON.stringify(coco)], { type: "application/json" }), `${stem()}_masks.json`);
  }

  // --------------------------------------------------------------------------- image

  async function openFile(file) {
    if (!file) return;
    const seq = ++state.seq;
    setBusy(1);
    setStatus(`Uploading ${file.name} and computing its embedding\u2026`);
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      const info = await api("/v1/images", { method: "POST", body: form });
      let picture;
      try {
        picture = await createImageBitmap(file);
      } catch (_) {
        throw new Error(`the browser cannot display ${file.name}`);
      }
      if (seq !== state.seq) return;
      if (state.picture) state.picture.close();
      Object.assign(state, {
        imageId: info.id, fileName: file.name, width: info.width, height: info.height,
        picture, actions: [], result: null, everything: null, overlay: null, selected: 0,
      });
      canvas.width = info.width;
      canvas.height = info.height;
      canvas.hidden = false;
      stage.classList.remove("empty");
      setStatus(`${file.name}: ${info.width}\u00d7${info.height}. Click to add points, drag for a box.`);
    } catch (error) {
      if (seq === state.seq) setStatus(error.message, true);
    } finally {
      setBusy(-1);
      updateControls();
      render();
    }
  }

  // --------------------------------------------------------------------------- events

  canvas.addEventListener("pointerdown", (event) => {
    // Ctrl+click is a right-click on macOS: the contextmenu handler adds that point.
    if (event.button !== 0 || event.ctrlKey || !state.imageId) return;
    canvas.setPointerCapture(event.pointerId);
    const at = toImage(event);
    state.drag = { start: at, current: at, screen: [event.clientX, event.clientY], moved: false };
  });

  canvas.addEventListener("pointermove", (event) => {
    const drag = state.drag;
    if (!drag) return;
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
      addAction({ type: "box", box: [Math.min(xa, xb), Math.min(ya, yb), Math.max(xa, xb), Math.max(ya, yb)] });
    } else {
      const [x, y] = drag.start;
      addAction({ type: "point", x, y, label: event.shiftKey ? 0 : 1 });
    }
  });

  canvas.addEventListener("pointercancel", () => { state.drag = null; render(); });

  canvas.addEventListener("contextmenu", (event) => {
    event.preventDefault();
    if (!state.imageId) return;
    const [x, y] = toImage(event);
    addAction({ type: "point", x, y, label: 0 });
  });

  $("file-input").addEventListener("change", (event) => {
    openFile(event.target.files[0]);
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
  stage.addEventListener("drop", (event) => {
    event.preventDefault();
    stage.classList.remove("dragover");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) openFile(file);
  });

  $("undo").addEventListener("click", () => {
    if (!state.actions.length) return;
    state.actions.pop();
    refresh();
  });
  $("clear").addEventListener("click", () => {
    state.actions = [];
    refresh();
  });
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "z" && state.actions.length) {
      event.preventDefault();
      state.actions.pop();
      refresh();
    }
  });
  $("multimask").addEventListener("change", () => { if (state.actions.length) refresh(); });
  $("everything").addEventListener("click", runEverything);
  $("download-png").addEventListener("click", downloadPng);
  $("download-coco").addEventListener("click", downloadCoco);

  updateControls();
})();
