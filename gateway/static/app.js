// exec-gateway web IDE: one session's live output over /v1/sessions/{id}/ws, runs, input(),
// interrupt and restart. Plain DOM, no dependencies; runs under the page's CSP (no inline
// script, no eval). Every run of the session shows up as a cell, whoever started it.
"use strict";

(() => {
  const MAX_CELL_CHARS = 1_000_000; // text kept in the page per cell; the rest is counted
  const ANSI = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)/g;
  const CLOSE_SESSION_GONE = 4410;
  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("connect"), token: $("token"), session: $("session"),
    conn: $("conn"), kernel: $("kernel"), kernelState: $("kernel-state"),
    generation: $("generation"), execCount: $("exec-count"),
    code: $("code"), run: $("run"), interrupt: $("interrupt"), restart: $("restart"),
    clear: $("clear"), output: $("output"),
  };

  const st = {
    ws: null, opened: false, wanted: false, retryMs: 500, timer: 0,
    lastSeq: null, // highest seq seen; null until the first hello
    outbox: [], cells: new Map(), displays: new Map(), nextId: 1, lastExecuteId: null,
  };

  // ------------------------------------------------------------------ helpers
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const plain = (text) => String(text ?? "").replace(ANSI, "");
  const lines = (v) => (Array.isArray(v) ? v.join("") : String(v ?? ""));
  const randomHex = (n) => Array.from(crypto.getRandomValues(new Uint8Array(n)),
    (b) => b.toString(16).padStart(2, "0")).join("");

  let scrollQueued = false;
  function stickToBottom(fn) {
    const out = ui.output;
    const atBottom = out.scrollHeight - out.scrollTop - out.clientHeight < 48;
    fn();
    if (atBottom && !scrollQueued) {
      scrollQueued = true;
      requestAnimationFrame(() => { scrollQueued = false; out.scrollTop = out.scrollHeight; });
    }
  }

  function notice(text, kind = "info") {
    stickToBottom(() => ui.output.append(el("p", `notice ${kind}`, text)));
  }

  // ------------------------------------------------------------------ status bar
  function setConn(state, text) {
    ui.conn.dataset.conn = state;
    ui.conn.textContent = text || state;
  }

  function setKernel({ state, generation, executionCount }) {
    if (state) { ui.kernel.dataset.state = state; ui.kernelState.textContent = state; }
    if (typeof generation === "number") ui.generation.textContent = `gen ${generation}`;
    if (typeof executionCount === "number") ui.execCount.textContent = `[${executionCount}]`;
  }

  // ------------------------------------------------------------------ cells
  class Cell {
    constructor(id, code) {
      this.id = id;
      this.chars = 0;
      this.hidden = 0;
      this.lastStream = null;
      this.clearPending = false;
      this.root = el("article", "cell running");
      this.root.dataset.id = id;
      const head = el("div", "cell-head");
      this.prompt = el("span", "prompt", "[*]");
      head.append(this.prompt);
      if (code !== undefined) {
        head.append(el("pre", "cell-code", code));
      } else {
        const origin = id.startsWith("rest-") ? "a REST call" : "another client";
        head.append(el("span", "cell-origin", `run ${id}, started by ${origin}`));
      }
      this.out = el("div", "cell-out");
      this.foot = el("div", "cell-foot");
      this.root.append(head, this.out, this.foot);
      ui.output.querySelector(".empty")?.remove();
      stickToBottom(() => ui.output.append(this.root));
    }

    add(node) {
      if (this.clearPending) { this.clearNow(); }
      stickToBottom(() => this.out.append(node));
    }

    clearNow() {
      this.clearPending = false;
      this.out.replaceChildren();
      this.lastStream = null;
      this.chars = 0;
    }

    stream(name, text) {
      text = plain(text);
      if (this.chars + text.length > MAX_CELL_CHARS) {
        this.hidden += text.length;
        this.root.dataset.hidden = String(this.hidden);
        return;
      }
      this.chars += text.length;
      if (this.clearPending) this.clearNow();
      const last = this.lastStream;
      if (last && last.name === name && this.out.lastChild === last.node) {
        stickToBottom(() => last.node.append(text));
      } else {
        const node = el("pre", `stream ${name === "stderr" ? "stderr" : "stdout"}`, text);
        this.lastStream = { name, node };
        this.add(node);
      }
    }

    display(ev) {
      const node = renderBundle(ev.data || {}, ev.metadata || {});
      if (ev.type === "execute_result") {
        const wrap = el("div", "result-out");
        wrap.append(el("span", "out-prompt", `Out[${ev.execution_count ?? " "}]:`), node);
        this.add(wrap);
      } else {
        this.add(node);
      }
      if (ev.display_id) {
        if (!st.displays.has(ev.display_id)) st.displays.set(ev.display_id, []);
        st.displays.get(ev.display_id).push(node);
      }
    }

    error(ev) {
      const box = el("div", "traceback");
      const evalue = plain(ev.evalue);
      box.append(el("div", "exc", evalue ? `${plain(ev.ename)}: ${evalue}` : plain(ev.ename)));
      const tb = (ev.traceback || []).map(plain).join("\n");
      if (tb.trim()) box.append(el("pre", "", tb));
      this.add(box);
    }

    problem(message) {
      this.add(el("p", "notice error", message));
    }

    ask(ev) {
      const form = el("form", "stdin-form");
      const label = el("label", "", plain(ev.prompt) || "input: ");
      const input = el("input");
      input.type = ev.password ? "password" : "text";
      input.autocomplete = "off";
      input.spellcheck = false;
      label.append(input);
      const send = el("button", "primary", "Send");
      send.type = "submit";
      form.append(label, send);
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        if (!sendMsg({ type: "input_reply", id: ev.id, value: input.value })) return;
        const echo = ev.password ? "•".repeat(Math.min(input.value.length, 12)) : input.value;
        form.replaceWith(el("pre", "stream stdin", `${plain(ev.prompt)}${echo}\n`));
        this.input = null;
      });
      this.input?.remove();
      this.input = form;
      this.add(form);
      input.focus();
    }

    finish(result) {
      this.input?.remove();
      this.input = null;
      this.root.classList.remove("running");
      this.root.dataset.status = result.status;
      this.prompt.textContent = `[${result.execution_count ?? " "}]`;
      const badge = el("span", `badge ${result.status}`, result.status.replace("_", " "));
      const bits = [badge];
      if (typeof result.duration_ms === "number") {
        bits.push(el("span", "meta", `${Math.round(result.duration_ms)} ms`));
      }
      if (!result.state_preserved) bits.push(el("span", "badge warn", "state lost"));
      if (result.truncated) bits.push(el("span", "badge warn", "output truncated"));
      if (this.hidden) {
        bits.push(el("span", "badge warn", `${this.hidden.toLocaleString()} chars not shown`));
      }
      this.foot.replaceChildren(...bits);
      setKernel({ generation: result.generation, executionCount: result.execution_count });
    }
  }

  function cellFor(id) {
    const key = id || "(unknown)";
    let cell = st.cells.get(key);
    if (!cell) { cell = new Cell(key); st.cells.set(key, cell); }
    return cell;
  }

  // One mime bundle → one element. Richest safe type first; SVG only ever as an <img>
  // (a data: URL cannot run script), HTML only in a sandboxed frame that cannot either.
  function renderBundle(data) {
    for (const mime of ["image/png", "image/jpeg", "image/gif"]) {
      if (typeof data[mime] === "string") {
        const img = el("img", "rich");
        img.alt = plain(lines(data["text/plain"])) || mime;
        img.src = `data:${mime};base64,${data[mime].replace(/\s+/g, "")}`;
        return img;
      }
    }
    if (data["image/svg+xml"] !== undefined) {
      const img = el("img", "rich svg");
      img.alt = "SVG image";
      img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(lines(data["image/svg+xml"]))}`;
      return img;
    }
    if (data["text/html"] !== undefined) return htmlFrame(lines(data["text/html"]));
    if (data["application/json"] !== undefined) {
      return el("pre", "plain", JSON.stringify(data["application/json"], null, 2));
    }
    for (const mime of ["text/markdown", "text/latex", "text/plain"]) {
      if (data[mime] !== undefined) return el("pre", "plain", plain(lines(data[mime])));
    }
    return el("pre", "plain", `[${Object.keys(data).join(", ") || "empty output"}]`);
  }

  function htmlFrame(html) {
    const frame = el("iframe", "html-out");
    // No allow-scripts, ever: the cell's HTML cannot run code, submit forms or navigate.
    // allow-same-origin (safe without scripts) lets this page size the frame to its content;
    // the frame also inherits this page's CSP, so nothing loads from elsewhere.
    frame.setAttribute("sandbox", "allow-same-origin");
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.title = "HTML output";
    frame.srcdoc = `<!doctype html><meta charset="utf-8"><style>body{margin:6px;`
      + `font:13px/1.4 system-ui,sans-serif}table{border-collapse:collapse}`
      + `td,th{border:1px solid #ccd;padding:2px 6px}</style>${html}`;
    frame.addEventListener("load", () => {
      const root = frame.contentDocument?.documentElement;
      // the <html> box, not scrollHeight: that is never less than the frame's own height
      if (root) frame.style.height = `${Math.min(Math.ceil(root.getBoundingClientRect().height) + 2, 600)}px`;
    });
    return frame;
  }

  function updateDisplay(ev) {
    const nodes = st.displays.get(ev.display_id) || [];
    st.displays.set(ev.display_id, nodes.map((old) => {
      const node = renderBundle(ev.data || {});
      old.replaceWith(node);
      return node;
    }));
  }

  // ------------------------------------------------------------------ events
  function onEvent(ev) {
    window.dispatchEvent(new CustomEvent("egw:event", { detail: ev })); // files.js follows
    if (typeof ev.seq === "number") {
      if (st.lastSeq !== null && ev.seq <= st.lastSeq) return; // seen before this reconnect
      st.lastSeq = ev.seq;
    }
    switch (ev.type) {
      case "hello": return onHello(ev);
      case "status":
        setKernel({ state: ev.state, generation: ev.generation });
        if (ev.state === "closed") notice("The session was closed; Run starts it again.", "warn");
        return;
      case "stream": return cellFor(ev.id).stream(ev.name, ev.text);
      case "display_data":
      case "execute_result": return cellFor(ev.id).display(ev);
      case "update_display_data": return updateDisplay(ev);
      case "clear_output": {
        const cell = cellFor(ev.id);
        if (ev.wait) cell.clearPending = true; else cell.clearNow();
        return;
      }
      case "input_request": return cellFor(ev.id).ask(ev);
      case "error":
        if (ev.code !== undefined) { // a protocol error: this client's message was refused
          const text = `${ev.code}: ${ev.message}`;
          if (ev.id && st.cells.has(ev.id)) {
            const cell = st.cells.get(ev.id);
            cell.problem(text);
            if (cell.root.classList.contains("running")) cell.finish({ status: "refused", state_preserved: true });
          } else {
            notice(text, "error");
          }
          return;
        }
        return cellFor(ev.id).error(ev);
      case "result": return cellFor(ev.id).finish(ev.result);
      case "gap":
        if (ev.from_seq === 1) return notice("Earlier output of this session is no longer kept.");
        return notice(`Events ${ev.from_seq}–${ev.to_seq} are no longer kept by the gateway: `
          + "some output of that time is missing.", "warn");
      case "dropped":
        return notice(`${ev.count} events were dropped because this page read too slowly`
          + (ev.from_seq ? ` (seq ${ev.from_seq}–${ev.to_seq}).` : "."), "warn");
      default: return undefined;
    }
  }

  function onHello(ev) {
    if (st.lastSeq !== null && ev.last_seq < st.lastSeq) {
      // the gateway's log for this session started again (session recreated or gateway
      // restarted); it replays its new log from the start
      notice("The session's event log started over (session recreated or gateway restarted).", "warn");
      st.lastSeq = 0;
    }
    if (st.lastSeq === null) st.lastSeq = 0;
    if (ev.max_message_bytes) st.maxMessageBytes = ev.max_message_bytes;
    setKernel({ state: ev.state, generation: ev.generation, executionCount: ev.execution_count });
  }

  // ------------------------------------------------------------------ connection
  const sessionId = () => ui.session.value.trim();
  const token = () => ui.token.value.trim();

  function wsUrl() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams();
    if (token()) q.set("token", token());
    q.set("since", String(st.lastSeq ?? 0)); // first connect: the session's recent history
    return `${proto}//${location.host}/v1/sessions/${encodeURIComponent(sessionId())}/ws?${q}`;
  }

  function connect() {
    clearTimeout(st.timer);
    if (!sessionId() || !ui.session.checkValidity()) {
      setConn("offline", "invalid session id");
      return;
    }
    st.wanted = true;
    const ws = new WebSocket(wsUrl());
    st.ws = ws;
    st.opened = false;
    setConn("connecting", "connecting…");
    ws.addEventListener("open", () => {
      if (st.ws !== ws) return;
      st.opened = true;
      st.retryMs = 500;
      setConn("online", "connected");
      for (const msg of st.outbox.splice(0)) ws.send(JSON.stringify(msg));
    });
    ws.addEventListener("message", (e) => {
      if (st.ws !== ws) return;
      let ev;
      try { ev = JSON.parse(e.data); } catch { return; }
      onEvent(ev);
    });
    ws.addEventListener("close", (e) => { if (st.ws === ws) onClose(e); });
  }

  async function onClose(e) {
    const wasOpen = st.opened;
    st.ws = null;
    st.opened = false;
    if (!st.wanted) { setConn("offline"); return; }
    if (e.code === CLOSE_SESSION_GONE) {
      st.wanted = false;
      st.lastSeq = null; // a new session starts a new log
      setConn("offline", "session closed");
      return;
    }
    if (e.code === 1009) {
      const cell = st.cells.get(st.lastExecuteId);
      if (cell?.root.classList.contains("running")) {
        cell.problem("This code is larger than the gateway accepts in one message.");
        cell.finish({ status: "refused", state_preserved: true });
      } else {
        notice("The last message was too large for the gateway.", "error");
      }
    }
    if (!wasOpen) {
      // the upgrade was refused: the browser hides why, so ask the REST API
      const why = await diagnose();
      if (why) {
        st.wanted = false;
        st.outbox.length = 0;
        setConn("offline", why);
        notice(`The gateway refused the connection: ${why}`, "error");
        return;
      }
    }
    const delay = st.retryMs;
    st.retryMs = Math.min(st.retryMs * 2, 8000);
    setConn("reconnecting", `reconnecting in ${Math.round(delay / 100) / 10}s`);
    st.timer = setTimeout(() => { if (st.wanted && !st.ws) connect(); }, delay);
  }

  async function diagnose() {
    try {
      const r = await api("GET", "");
      if (r.ok || r.status === 404) return null;
      const body = await r.json().catch(() => ({}));
      return body.error?.message || `the gateway answered ${r.status}`;
    } catch {
      return null; // network trouble: keep retrying
    }
  }

  function api(method, suffix) {
    const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
    return fetch(`/v1/sessions/${encodeURIComponent(sessionId())}${suffix}`, { method, headers });
  }

  function sendMsg(msg) {
    if (st.ws && st.opened) { st.ws.send(JSON.stringify(msg)); return true; }
    if (msg.type === "execute") {
      st.outbox.push(msg);
      if (!st.ws) connect();
      return true;
    }
    notice("Not connected to the gateway.", "error");
    return false;
  }

  function reconnectFresh() {
    remember();
    st.wanted = false;
    if (st.ws) st.ws.close(1000);
    st.ws = null;
    st.lastSeq = null;
    st.cells.clear();
    st.displays.clear();
    ui.output.replaceChildren(el("p", "empty", "Output appears here as the kernel produces it."));
    setKernel({ state: "unknown" });
    ui.generation.textContent = "gen –";
    ui.execCount.textContent = "[–]";
    connect();
  }

  // ------------------------------------------------------------------ actions
  function run() {
    const code = ui.code.value;
    if (!code.trim()) return;
    const id = `c${st.nextId++}-${randomHex(3)}`;
    const cell = new Cell(id, code);
    st.cells.set(id, cell);
    st.lastExecuteId = id;
    const msg = { type: "execute", id, code };
    // refuse locally what the gateway would refuse by closing the socket (1009): a close
    // racing a half-sent frame can reach the browser as 1006, and the cell would wait forever
    if (st.maxMessageBytes && new Blob([JSON.stringify(msg)]).size > st.maxMessageBytes) {
      cell.problem("This code is larger than the gateway accepts in one message.");
      cell.finish({ status: "refused", state_preserved: true });
      return;
    }
    sendMsg(msg);
  }

  async function restart() {
    ui.restart.disabled = true;
    setKernel({ state: "restarting" });
    try {
      const r = await api("POST", "/restart");
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.error?.message || `restart failed (${r.status})`);
      setKernel({ state: body.state, generation: body.generation, executionCount: body.execution_count });
      notice(`Restarted: a fresh interpreter (generation ${body.generation}).`);
    } catch (err) {
      notice(String(err.message || err), "error");
    } finally {
      ui.restart.disabled = false;
    }
  }

  // ------------------------------------------------------------------ editor
  const INDENT = "    ";

  function insertText(ta, text) {
    // execCommand keeps the browser's undo history; setRangeText is the fallback
    if (!document.execCommand("insertText", false, text)) {
      ta.setRangeText(text, ta.selectionStart, ta.selectionEnd, "end");
    }
  }

  function shiftLines(ta, outdent) {
    const { value, selectionStart: s, selectionEnd: e } = ta;
    const start = value.lastIndexOf("\n", s - 1) + 1;
    const end = e > s && value[e - 1] === "\n" ? e - 1 : e;
    const block = value.slice(start, end);
    const changed = block.split("\n").map((line) => (outdent
      ? line.replace(/^( {1,4}|\t)/, "") : INDENT + line)).join("\n");
    ta.setSelectionRange(start, end);
    insertText(ta, changed);
    ta.setSelectionRange(start, start + changed.length);
  }

  function onEditorKey(e) {
    const ta = ui.code;
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); return; }
    if (e.key === "Escape") { ta.blur(); return; }
    if (e.key === "Tab" && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      const multi = ta.value.slice(ta.selectionStart, ta.selectionEnd).includes("\n");
      if (e.shiftKey || multi) shiftLines(ta, e.shiftKey);
      else insertText(ta, INDENT);
      return;
    }
    if (e.key === "Enter" && !e.shiftKey && !e.altKey) {
      // keep the line's indentation, one more level after a colon
      const before = ta.value.slice(0, ta.selectionStart);
      const line = before.slice(before.lastIndexOf("\n") + 1);
      let indent = line.match(/^[ \t]*/)[0];
      if (/:\s*$/.test(line)) indent += INDENT;
      e.preventDefault();
      insertText(ta, `\n${indent}`);
    }
  }

  // ------------------------------------------------------------------ start-up
  function remember() {
    try {
      localStorage.setItem("egw.token", token());
      localStorage.setItem("egw.session", sessionId());
    } catch { /* storage may be off; the fields still work */ }
  }

  function init() {
    const stored = (k) => { try { return localStorage.getItem(k) || ""; } catch { return ""; } };
    const hash = new URLSearchParams(location.hash.slice(1));
    ui.token.value = hash.get("token") || stored("egw.token");
    ui.session.value = hash.get("session") || stored("egw.session") || `ide-${randomHex(3)}`;
    if (hash.has("token") || hash.has("session")) {
      // keep the token out of the address bar and history
      history.replaceState(null, "", location.pathname + location.search);
    }
    remember();
    ui.form.addEventListener("submit", (e) => { e.preventDefault(); reconnectFresh(); });
    ui.run.addEventListener("click", run);
    ui.interrupt.addEventListener("click", () => sendMsg({ type: "interrupt" }));
    ui.restart.addEventListener("click", restart);
    ui.clear.addEventListener("click", () => {
      for (const cell of st.cells.values()) {
        if (!cell.root.classList.contains("running")) { cell.root.remove(); st.cells.delete(cell.id); }
      }
      ui.output.querySelectorAll(".notice").forEach((n) => n.remove());
    });
    ui.code.addEventListener("keydown", onEditorKey);
    connect();
  }

  init();
})();
