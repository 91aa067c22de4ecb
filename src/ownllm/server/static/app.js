// The chat page: conversations kept by the server (/api, see server/conversations.py),
// replies streamed as server-sent events read from fetch(), a stop button that aborts the
// request (the server then stops generating and keeps what was written).
//
// No text from a user, the model or the server is ever parsed as HTML: elements are built
// with createElement and filled with textContent, and replies go through markdown.js,
// which does the same.

import { renderMarkdown } from "./markdown.js";

const KEY_STORAGE = "ownllm.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  info: null, // GET /api/info
  conversations: [], // the list, newest first
  current: null, // the open conversation with its messages; null: a new chat not saved yet
  controller: null, // the AbortController of the reply being streamed
  commenting: null, // id of the reply whose comment box is open
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Elements ----------------------------------------------------------------------------

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "label") node.setAttribute("aria-label", value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
}

function button(text, className, onclick, label) {
  const props = { type: "button", className, textContent: text, onclick };
  if (label) props.label = props.title = label;
  return el("button", props);
}

function notice(message, isError = false) {
  const box = $("notice");
  box.hidden = !message;
  box.textContent = message || "";
  box.classList.toggle("error", isError);
}

// HTTP --------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let keyPrompt = null;
function askForKey(message) {
  keyPrompt ??= new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key-message").textContent = message;
    $("key-input").value = "";
    $("key-form").onsubmit = (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      localStorage.setItem(KEY_STORAGE, key);
      dialog.close();
      keyPrompt = null;
      resolve();
    };
    dialog.showModal();
  });
  return keyPrompt;
}

// fetch /api/PATH with the saved key; asks for a key on 401, waits out a 409 (a stopped
// reply the server is still closing), and turns other errors into ApiError.
async function request(method, path, body, signal) {
  for (let attempt = 0; ; attempt++) {
    const key = localStorage.getItem(KEY_STORAGE);
    const headers = {};
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(`/api${path}`, {
      method,
      headers,
      signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      await askForKey(key ? "The saved API key was refused. Enter the key the server was started with."
                          : "This server needs an API key (the one given to ownllm serve).");
      continue;
    }
    if (response.status === 409 && attempt < 10) {
      await sleep(300);
      continue;
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = (await response.json()).error.message;
      } catch {
        // not our JSON error: keep the status line
      }
      throw new ApiError(response.status, message);
    }
    return response;
  }
}

async function api(method, path, body) {
  const response = await request(method, path, body);
  return response.status === 204 ? null : response.json();
}

const conversationPath = (id, rest = "") => `/conversations/${encodeURIComponent(id)}${rest}`;

// Server-sent events from a fetch() response: {event, data} objects.
async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// The conversation list -----------------------------------------------------------------

async function loadConversations() {
  state.conversations = (await api("GET", "/conversations")).conversations;
  renderConversationList();
}

function renderConversationList() {
  const items = state.conversations.map((c) => {
    const item = el("li", { className: c.id === state.current?.id ? "active" : "" });
    item.dataset.id = c.id;
    const open = button(c.title || "New chat", "open", () => openConversation(c.id));
    open.title = c.title;
    const rename = button("", "icon glyph i-pencil rename", () => startRename(item, open, c), "Rename");
    const remove = button("", "icon glyph i-trash delete", () => confirmDelete(remove, c), "Delete");
    item.append(open, rename, remove);
    return item;
  });
  $("conversation-list").replaceChildren(...items);
}

function startRename(item, open, conversation) {
  const input = el("input", { value: conversation.title, maxLength: 200 });
  input.setAttribute("aria-label", "New title");
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== conversation.title) {
      try {
        await api("PATCH", conversationPath(conversation.id), { title });
        if (state.current?.id === conversation.id) state.current.title = title;
        renderHeader();
      } catch (error) {
        notice(error.message, true);
      }
    }
    await loadConversations();
  };
  input.onkeydown = (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  };
  input.onblur = () => finish(true);
  open.replaceWith(input);
  input.focus();
  input.select();
}

function confirmDelete(remove, conversation) {
  if (!remove.classList.contains("confirming")) {
    remove.classList.add("confirming");
    remove.textContent = "Delete?";
    setTimeout(() => {
      remove.classList.remove("confirming");
      remove.textContent = "";
    }, 4000);
    return;
  }
  api("DELETE", conversationPath(conversation.id))
    .then(async () => {
      if (state.current?.id === conversation.id) newChat();
      await loadConversations();
    })
    .catch((error) => notice(error.message, true));
}

// Opening and showing a conversation ----------------------------------------------------

async function openConversation(id) {
  if (state.controller) state.controller.abort();
  try {
    state.current = await api("GET", conversationPath(id));
  } catch (error) {
    notice(error.message, true);
    return;
  }
  history.replaceState(null, "", `#${id}`);
  notice("");
  fillSettings();
  render();
  $("sidebar").classList.remove("open");
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.current = null;
  history.replaceState(null, "", location.pathname);
  notice("");
  fillSettings();
  render();
  $("sidebar").classList.remove("open");
  $("input").focus();
}

function fillSettings() {
  const c = state.current;
  $("system-prompt").value = c ? c.system_prompt : (state.info?.system_prompt ?? "");
  if (c?.settings?.temperature !== undefined) $("temperature").value = c.settings.temperature;
  if (c?.settings?.max_tokens !== undefined) $("max-tokens").value = c.settings.max_tokens;
}

function readSettings() {
  const settings = {};
  const temperature = Number.parseFloat($("temperature").value);
  const maxTokens = Number.parseInt($("max-tokens").value, 10);
  if (Number.isFinite(temperature)) settings.temperature = temperature;
  if (Number.isFinite(maxTokens)) settings.max_tokens = maxTokens;
  return settings;
}

async function saveSettings() {
  if (!state.current || state.controller) return;
  const body = { system_prompt: $("system-prompt").value, settings: readSettings() };
  try {
    const saved = await api("PATCH", conversationPath(state.current.id), body);
    Object.assign(state.current, { system_prompt: saved.system_prompt, settings: saved.settings });
    notice("");
  } catch (error) {
    notice(error.message, true);
  }
}

function render() {
  renderHeader();
  renderMessages();
  renderConversationList();
  const busy = state.controller !== null;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

function renderHeader() {
  $("title").textContent = state.current?.title || "New chat";
}

function renderMessages() {
  const box = $("messages");
  const messages = state.current?.messages ?? [];
  if (!messages.length) {
    const name = state.info?.assistant_name;
    box.replaceChildren(el("p", { className: "empty", textContent: name ? `Say hello to ${name}.` : "Say hello." }));
    return;
  }
  const lastUser = messages.findLastIndex((m) => m.role === "user");
  const nodes = [];
  messages.forEach((message, i) => {
    if (message.role === "tool") return; // shown with the call it answers
    nodes.push(messageNode(message, messages[i + 1], i === lastUser, i === messages.length - 1));
  });
  box.replaceChildren(...nodes);
}

function messageNode(message, next, isLastUser, isLast) {
  const node = el("div", { className: `message ${message.role}` });
  node.dataset.id = message.id ?? "";
  node.dataset.status = message.status;
  message.node = node;
  const busy = state.controller !== null;
  if (message.role === "user") {
    node.append(el("div", { className: "bubble", textContent: message.content }));
    if (isLastUser && !busy) node.append(actions([button("Edit", "edit", () => startEdit(node, message))]));
    return node;
  }
  const body = el("div", { className: "body" }, [renderMarkdown(message.content)]);
  node.append(body);
  if (message.tool_call) {
    const call = `${message.tool_call.name}(${message.tool_call.arguments})`;
    const result = next?.role === "tool" ? next.content : "…";
    node.append(el("div", { className: "tool", textContent: `${call} → ${result}` }));
    return node;
  }
  if (message.status === "interrupted") node.append(el("span", { className: "status", textContent: "stopped" }));
  if (message.guardrail?.length) node.append(...message.guardrail.map(guardrailNote));
  if (message.citations?.length) node.append(sourcesNode(message.citations));
  if (message.status !== "streaming" && message.id) node.append(replyActions(message, isLast && !busy));
  return node;
}

const GUARDRAIL_WHERE = { input: "your message", output: "the reply" };
const GUARDRAIL_ACTION = { flag: "let through", mask: "masked", refuse: "refused" };

// What the safety check found while this reply was written (the stream's guardrail events).
function guardrailNote({ direction, action }) {
  const where = GUARDRAIL_WHERE[direction] ?? direction;
  const how = GUARDRAIL_ACTION[action] ?? action;
  return el("p", { className: "guardrail-note", textContent: `Flagged by the safety check (${where}, ${how})` });
}

// The knowledge-base passages the reply was given: "Sources: notes.md · passage 2", each opening to
// its text (plain text: a document is data, never HTML).
function sourcesNode(citations) {
  const items = citations.map((c) => {
    const name = c.path.split(/[\\/]/).pop() || c.path;
    const summary = el("summary", { textContent: `${name} · passage ${c.position + 1}`, title: c.path });
    return el("details", { className: "source" }, [summary, el("blockquote", { className: "passage", textContent: c.text })]);
  });
  return el("div", { className: "sources" }, [el("span", { textContent: "Sources:" }), ...items]);
}

function actions(children) {
  return el("div", { className: "actions" }, children);
}

function replyActions(message, canRegenerate) {
  const up = button("", "glyph i-thumb-up rate-up", () => rate(message, "up"), "Good reply");
  const down = button("", "glyph i-thumb-down rate-down", () => rate(message, "down"), "Bad reply");
  up.setAttribute("aria-pressed", String(message.rating === "up"));
  down.setAttribute("aria-pressed", String(message.rating === "down"));
  const children = [up, down];
  if (canRegenerate) children.push(button("↻ Regenerate", "regenerate", regenerate));
  if (state.commenting === message.id) {
    const input = el("input", { value: message.comment ?? "", maxLength: 2000, placeholder: "Add a comment (optional), Enter saves" });
    input.setAttribute("aria-label", "Comment");
    input.onkeydown = (event) => {
      if (event.key === "Enter") rate(message, message.rating, input.value);
      if (event.key === "Escape") closeComment(message);
    };
    children.push(input);
    setTimeout(() => input.focus());
  }
  return actions(children);
}

function rerender(message) {
  if (!message.node?.isConnected) return renderMessages();
  const messages = state.current.messages;
  const i = messages.indexOf(message);
  const lastUser = messages.findLastIndex((m) => m.role === "user");
  message.node.replaceWith(messageNode(message, messages[i + 1], i === lastUser, i === messages.length - 1));
}

async function rate(message, rating, comment) {
  const toggledOff = comment === undefined && message.rating === rating;
  const body = { rating: toggledOff ? null : rating, comment: comment ?? message.comment ?? "" };
  try {
    const saved = await api("POST", `/messages/${encodeURIComponent(message.id)}/feedback`, body);
    message.rating = saved.rating;
    message.comment = saved.comment;
    state.commenting = comment === undefined && saved.rating === "down" ? message.id : null; // why was it bad?
    if (comment !== undefined) notice("Thanks, comment saved.");
  } catch (error) {
    notice(error.message, true);
  }
  rerender(message);
}

function closeComment(message) {
  state.commenting = null;
  rerender(message);
}

function startEdit(node, message) {
  const text = el("textarea", { value: message.content });
  text.setAttribute("aria-label", "Edit your message");
  const resend = () => {
    const content = text.value.trim();
    if (content) editAndResend(content);
  };
  text.onkeydown = (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      resend();
    }
    if (event.key === "Escape") renderMessages();
  };
  node.replaceChildren(text, actions([button("Send", "resend", resend), button("Cancel", "cancel", renderMessages)]));
  text.focus();
}

// Sending and streaming -------------------------------------------------------------------

async function send(text) {
  if (state.controller) return;
  notice("");
  if (!state.current) {
    try {
      const created = await api("POST", "/conversations", {
        system_prompt: $("system-prompt").value,
        settings: readSettings(),
      });
      state.current = { ...created, messages: [] };
      history.replaceState(null, "", `#${created.id}`);
    } catch (error) {
      notice(error.message, true);
      $("input").value = text;
      return;
    }
  }
  const user = { role: "user", content: text, status: "complete" };
  state.current.messages.push(user);
  await streamReply("messages", { content: text, ...readSettings(), system_prompt: $("system-prompt").value }, user);
}

async function regenerate() {
  const messages = state.current.messages;
  messages.splice(messages.findLastIndex((m) => m.role === "user") + 1);
  await streamReply("regenerate", { ...readSettings(), system_prompt: $("system-prompt").value }, null);
}

async function editAndResend(content) {
  const messages = state.current.messages;
  messages.splice(messages.findLastIndex((m) => m.role === "user"));
  const user = { role: "user", content, status: "complete" };
  messages.push(user);
  await streamReply("edit", { content, ...readSettings(), system_prompt: $("system-prompt").value }, user);
}

// Stream one reply into the open conversation. The server already keeps everything; after
// the stream the page reloads the conversation from it, unless the reply was stopped here.
async function streamReply(action, body, user) {
  const conversation = state.current;
  const controller = new AbortController();
  let reply = { role: "assistant", content: "", status: "streaming" };
  conversation.messages.push(reply);
  state.controller = controller;
  render();
  scrollToEnd(true);
  let outcome = "failed";
  let error = null;
  let dropped = 0;
  const flags = []; // the safety check's findings in this turn, shown on its reply
  try {
    const response = await request("POST", conversationPath(conversation.id, `/${action}`), body, controller.signal);
    for await (const { event, data } of readEvents(response)) {
      if (event === "start") {
        if (user && data.user_message) user.id = data.user_message.id;
        reply.id = data.reply_id;
      } else if (event === "text") {
        reply.content += data.text;
        showText(reply);
      } else if (event === "tool_result") {
        const [call, result] = data.messages;
        Object.assign(reply, call);
        reply = { role: "assistant", content: "", status: "streaming", id: data.reply_id, guardrail: flags };
        conversation.messages.push(result, reply);
        renderMessages();
      } else if (event === "guardrail") {
        if (!flags.some((f) => f.direction === data.direction && f.action === data.action)) flags.push(data);
        reply.guardrail = flags;
        rerender(reply);
      } else if (event === "done") {
        outcome = "done";
        dropped = data.dropped;
      } else if (event === "error") {
        error = data.error.message;
      }
    }
  } catch (e) {
    if (e.name === "AbortError") outcome = "stopped";
    else error = e.message;
  }
  state.controller = null;
  if (state.current !== conversation) {
    render(); // the user moved on (the server has it all): just the buttons
    return;
  }
  if (outcome === "stopped") {
    reply.status = "interrupted";
    render();
  } else {
    if (outcome !== "done" && user && !user.id) $("input").value ||= user.content; // not sent: give the text back
    try {
      state.current = await api("GET", conversationPath(conversation.id));
      const saved = state.current.messages.find((m) => m.id === reply.id);
      if (saved && flags.length) saved.guardrail = flags; // not kept with the message: the safety log has them
    } catch (e) {
      error ??= e.message;
    }
    render();
  }
  if (error) notice(error, true);
  else if (dropped) notice(`The conversation is longer than the model's context: it did not see the first ${dropped} messages.`);
  scrollToEnd(false);
  loadConversations().catch((e) => notice(e.message, true));
}

let pendingText = null;
let renderCost = 0; // how long the last re-render of the streaming reply took (ms)
let renderedAt = 0;
function showText(reply) {
  // Re-render the streaming reply at most once per frame, and no more often than leaves four
  // fifths of the time to the page: a long reply takes longer to render, so it is redrawn less often.
  if (pendingText) return;
  const wait = Math.max(0, renderedAt + 4 * renderCost - performance.now());
  pendingText = setTimeout(() => {
    requestAnimationFrame(() => {
      pendingText = null;
      const body = reply.node?.querySelector(".body");
      if (!body) return;
      const follow = nearBottom();
      const start = performance.now();
      body.replaceChildren(renderMarkdown(reply.content));
      renderedAt = performance.now();
      renderCost = renderedAt - start;
      if (follow) scrollToEnd(true);
    });
  }, wait);
}

function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToEnd(force) {
  const box = $("messages");
  if (force || nearBottom()) box.scrollTop = box.scrollHeight;
}

function stop() {
  state.controller?.abort();
}

// Start -----------------------------------------------------------------------------------

function bind() {
  $("composer").onsubmit = (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.controller) return;
    $("input").value = "";
    send(text);
  };
  $("input").onkeydown = (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  };
  $("stop").onclick = stop;
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) stop();
  });
  $("new-chat").onclick = newChat;
  $("about-model").onclick = showModelCard;
  $("open-memories").onclick = showMemories;
  $("open-safety-log").onclick = showSafetyLog;
  $("memory-form").onsubmit = addMemory;
  $("open-sidebar").onclick = () => $("sidebar").classList.add("open");
  $("close-sidebar").onclick = () => $("sidebar").classList.remove("open");
  $("toggle-settings").onclick = () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("toggle-settings").setAttribute("aria-expanded", String(!panel.hidden));
  };
  for (const id of ["system-prompt", "temperature", "max-tokens"]) $(id).addEventListener("change", saveSettings);
}

// The conversation id in the address (#id); a malformed one ("#%ZZ") is no id, not a broken page.
function hashId() {
  try {
    return decodeURIComponent(location.hash.slice(1));
  } catch {
    return "";
  }
}

async function start() {
  bind();
  try {
    await loadInfo();
    await loadConversations();
  } catch (error) {
    notice(error.message, true);
  }
  const id = hashId();
  if (id && state.conversations.some((c) => c.id === id)) await openConversation(id);
  else newChat();
  if (!state.info?.ready) waitUntilReady();
}

// Memories: what the assistant keeps about the caller (GET/POST/DELETE /api/memories), as plain text.
async function showMemories() {
  $("memories-status").textContent = "";
  await loadMemories();
  $("memories-dialog").showModal();
  $("memory-input").focus();
}

async function loadMemories() {
  try {
    const { memories } = await api("GET", "/memories");
    const items = memories.map((m) => {
      const forget = button("", "icon glyph i-trash forget", () => forgetMemory(m), "Forget");
      const item = el("li", {}, [el("span", { className: "entry-text", textContent: m.text }), forget]);
      item.dataset.id = m.id;
      return item;
    });
    if (!items.length) items.push(el("li", { className: "muted", textContent: "Nothing yet." }));
    $("memory-list").replaceChildren(...items);
  } catch (error) {
    $("memories-status").textContent = error.message;
  }
}

async function addMemory(event) {
  event.preventDefault();
  const text = $("memory-input").value.trim();
  if (!text) return;
  try {
    await api("POST", "/memories", { text });
    $("memory-input").value = "";
    $("memories-status").textContent = "";
  } catch (error) {
    $("memories-status").textContent = error.message;
  }
  await loadMemories();
}

async function forgetMemory(memory) {
  try {
    await api("DELETE", `/memories/${encodeURIComponent(memory.id)}`);
  } catch (error) {
    $("memories-status").textContent = error.message;
  }
  await loadMemories();
}

// The safety log: what the guardrail found in the caller's messages and replies (GET /api/guardrail-log).
async function showSafetyLog() {
  let items;
  try {
    const { entries } = await api("GET", "/guardrail-log");
    items = entries.map((e) => {
      const when = new Date(e.created * 1000).toLocaleString();
      const where = GUARDRAIL_WHERE[e.direction] ?? e.direction;
      const how = GUARDRAIL_ACTION[e.action] ?? e.action;
      return el("li", {}, [
        el("span", { className: "muted", textContent: `${when} · ${where}, ${how}: ` }),
        el("span", { className: "entry-text", textContent: e.findings }),
      ]);
    });
    if (!items.length) items = [el("li", { className: "muted", textContent: "Nothing flagged." })];
  } catch (error) {
    items = [el("li", { className: "muted", textContent: error.message })];
  }
  $("safety-list").replaceChildren(...items);
  $("safety-dialog").showModal();
}

// The model card `ownllm report` wrote (GET /api/model-card), rendered like a reply: text, never HTML.
async function showModelCard() {
  const body = $("about-body");
  try {
    const response = await request("GET", "/model-card");
    body.replaceChildren(renderMarkdown(await response.text()));
  } catch (error) {
    body.replaceChildren(el("p", { className: "muted", textContent: error.message }));
  }
  $("about-dialog").showModal();
  $("about-dialog").scrollTop = 0; // the card's beginning, not the Close button's end
}

async function loadInfo() {
  state.info = await api("GET", "/info");
  const who = state.info.assistant_name ? `${state.info.assistant_name} · ` : "";
  $("model-info").textContent = `${who}${state.info.model}`;
  $("max-tokens").max = state.info.max_tokens_limit;
}

// The server answers before its model is loaded; the default system prompt comes with the model.
async function waitUntilReady() {
  notice("The model is loading…");
  while (!state.info?.ready) {
    await sleep(1000);
    try {
      await loadInfo();
    } catch (error) {
      notice(error.message, true);
      return;
    }
  }
  notice("");
  if (!state.current) fillSettings();
  renderMessages();
}

start();
