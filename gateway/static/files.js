// exec-gateway web IDE: the file panel — the session's workspace listed, uploads by drag and
// drop (or the Upload button), downloads and deletes, over /v1/sessions/{id}/files. It follows
// the session's WebSocket through app.js's "egw:event" events: a file_changed event or a
// cell's result refreshes the list. Plain DOM, no dependencies, no inline script.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    panel: $("files"), list: $("file-list"), input: $("file-input"),
    refresh: $("files-refresh"), status: $("files-status"), token: $("token"),
    session: $("session"),
  };
  let timer = 0;
  let loaded = "";

  const sessionId = () => ui.session.value.trim();
  const headers = () => (ui.token.value.trim()
    ? { Authorization: `Bearer ${ui.token.value.trim()}` } : {});
  const base = () => `/v1/sessions/${encodeURIComponent(sessionId())}/files`;
  const fileUrl = (path) => `${base()}/${path.split("/").map(encodeURIComponent).join("/")}`;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function say(text, kind = "info") {
    ui.status.textContent = text;
    ui.status.dataset.kind = kind;
  }

  function size(n) {
    if (n === null || n === undefined) return "";
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  async function failure(r) {
    const body = await r.json().catch(() => ({}));
    return body.error?.message || `the gateway answered ${r.status}`;
  }

  // ------------------------------------------------------------------ list
  async function load() {
    if (!sessionId()) return;
    const r = await fetch(`${base()}?recursive=true`, { headers: headers() }).catch(() => null);
    if (!r) { say("cannot reach the gateway", "error"); return; }
    if (r.status === 404) { show([]); say("no files yet"); return; }
    if (!r.ok) { say(await failure(r), "error"); return; }
    const body = await r.json();
    show(body.files.filter((f) => f.type === "file"));
    if (body.truncated) say("showing the first entries only");
  }

  function show(files) {
    loaded = sessionId();
    if (!files.length) {
      ui.list.replaceChildren(el("li", "empty", "No files. Drop files here to upload them."));
      return;
    }
    ui.list.replaceChildren(...files.map((f) => {
      const row = el("li", "file");
      row.dataset.path = f.path;
      const name = el("span", "file-name", f.path);
      name.title = `${f.path} · modified ${new Date(f.modified_at).toLocaleString()}`;
      const get = el("button", "quiet file-download", "Download");
      get.type = "button";
      get.addEventListener("click", () => download(f.path));
      const del = el("button", "quiet file-delete", "Delete");
      del.type = "button";
      del.addEventListener("click", () => remove(f.path));
      row.append(name, el("span", "file-size", size(f.size)), get, del);
      return row;
    }));
  }

  function soon() {
    clearTimeout(timer);
    timer = setTimeout(load, 150); // one listing for a burst of events
  }

  // ------------------------------------------------------------------ actions
  async function upload(files) {
    for (const file of files) {
      say(`uploading ${file.name}…`);
      const r = await fetch(fileUrl(file.name), { method: "PUT", headers: headers(), body: file })
        .catch(() => null);
      if (!r || !r.ok) { say(r ? await failure(r) : "upload failed", "error"); return; }
    }
    say(`uploaded ${files.length} file${files.length === 1 ? "" : "s"}`);
    load();
  }

  async function download(path) {
    const r = await fetch(fileUrl(path), { headers: headers() }).catch(() => null);
    if (!r || !r.ok) { say(r ? await failure(r) : "download failed", "error"); return; }
    const url = URL.createObjectURL(await r.blob());
    const a = el("a");
    a.href = url;
    a.download = path.split("/").pop();
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  async function remove(path) {
    const r = await fetch(fileUrl(path), { method: "DELETE", headers: headers() })
      .catch(() => null);
    if (!r || !r.ok) { say(r ? await failure(r) : "delete failed", "error"); return; }
    say(`deleted ${path}`);
    load();
  }

  // ------------------------------------------------------------------ wiring
  function init() {
    ui.refresh.addEventListener("click", load);
    ui.input.addEventListener("change", () => { upload([...ui.input.files]); ui.input.value = ""; });
    for (const name of ["dragenter", "dragover"]) {
      ui.panel.addEventListener(name, (e) => {
        e.preventDefault();
        ui.panel.classList.add("dropping");
      });
    }
    ui.panel.addEventListener("dragleave", () => ui.panel.classList.remove("dropping"));
    ui.panel.addEventListener("drop", (e) => {
      e.preventDefault();
      ui.panel.classList.remove("dropping");
      const files = [...(e.dataTransfer?.files || [])];
      if (files.length) upload(files);
    });
    window.addEventListener("egw:event", (e) => {
      const type = e.detail?.type;
      if (type === "file_changed" || type === "result") soon();
      else if (type === "hello" && loaded !== sessionId()) load();
    });
  }

  init();
})();
