/* Playground: chat and side by side, streamed from /v1/chat/completions through the dashboard's proxy
   (/ui/playground/chat adds the signed-in key server-side; this script only sends the CSRF token). */
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const history = [];

  function options() {
    return {max_tokens: parseInt($("max-tokens").value, 10) || 64,
            temperature: parseFloat($("temperature").value) || 0};
  }

  // one streamed completion: onText(delta) per token chunk; resolves {text, ms, usage}
  async function complete(model, messages, onText) {
    const t0 = performance.now();
    const resp = await fetch("/ui/playground/chat", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(Object.assign({model: model, messages: messages, stream: true,
                                          stream_options: {include_usage: true}}, options()))});
    if (!resp.ok) {
      let msg = "HTTP " + resp.status;
      try { msg = (await resp.json()).error.message || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "", text = "", usage = null, first = null;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message || "error");
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            if (first === null) first = performance.now() - t0;
            text += delta.content;
            onText(delta.content);
          }
        }
      }
    }
    return {text: text, ms: performance.now() - t0, first: first, usage: usage};
  }

  function stats(r) {
    const u = r.usage || {};
    return `${Math.round(r.ms)} ms` + (r.first !== null ? ` (first token ${Math.round(r.first)} ms)` : "") +
      (u.completion_tokens !== undefined ? ` · ${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens` : "");
  }

  function addMessage(role, text) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("b");
    who.textContent = role + ": ";
    const body = document.createElement("span");
    body.textContent = text;
    div.append(who, body);
    $("chat-log").append(div);
    return body;
  }

  $("chat-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text) return;
    $("chat-input").value = "";
    addMessage("user", text);
    history.push({role: "user", content: text});
    const out = addMessage("assistant", "");
    $("chat-send").disabled = true;
    try {
      const r = await complete($("chat-model").value, history.slice(), (d) => { out.textContent += d; });
      history.push({role: "assistant", content: r.text});
      out.title = stats(r);
    } catch (e) {
      out.textContent = "error: " + e.message;
      out.className = "error";
      history.pop();
    } finally {
      $("chat-send").disabled = false;
    }
  });
  $("chat-reset").addEventListener("click", () => { history.length = 0; $("chat-log").textContent = ""; });

  $("side-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("side-input").value.trim();
    if (!text) return;
    $("side-send").disabled = true;
    await Promise.all(["a", "b"].map(async (pane) => {
      const out = $("answer-" + pane);
      out.textContent = "";
      out.classList.remove("error");
      $("stats-" + pane).textContent = "…";
      try {
        const r = await complete($("side-model-" + pane).value, [{role: "user", content: text}],
                                 (d) => { out.textContent += d; });
        $("stats-" + pane).textContent = stats(r);
        out.dataset.done = "1";
      } catch (e) {
        out.textContent = "error: " + e.message;
        out.classList.add("error");
        $("stats-" + pane).textContent = "";
      }
    }));
    $("side-send").disabled = false;
  });

  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      const side = $("mode-side").checked;
      $("side-mode").hidden = !side;
      $("chat-mode").hidden = side;
    });
  }
})();
