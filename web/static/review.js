// The night view: move with j/k or the arrows, grade with 1-4, r for a reason,
// n for a note, shift-click for a range, u to undo. Each grade is a POST to
// /exposures/ID/flags: a person's flag, as `obsarch flag` records it.
(function () {
  "use strict";
  const grid = document.getElementById("frames");
  if (!grid) return;
  const cards = Array.from(grid.querySelectorAll(".card"));
  const grades = grid.dataset.grades.split(",");
  const writable = grid.dataset.writable === "true";
  const status = document.getElementById("status");
  const annotate = document.getElementById("annotate");
  const undoStack = [];
  let cursor = 0;
  let anchor = 0;
  let selected = new Set(cards.length ? [0] : []);

  function say(text, problem) {
    status.textContent = text;
    status.classList.toggle("problem", Boolean(problem));
  }

  function render() {
    const ids = new Set();
    cards.forEach(function (card, i) {
      card.classList.toggle("selected", selected.has(i));
      card.classList.toggle("cursor", i === cursor);
      if (selected.has(i)) ids.add(card.dataset.id);
    });
    document.querySelectorAll("svg.plot .point").forEach(function (point) {
      point.classList.toggle("selected", ids.has(point.dataset.id));
    });
  }

  function select(index, extend) {
    if (index < 0 || index >= cards.length) return;
    cursor = index;
    if (extend) {
      const low = Math.min(anchor, index), high = Math.max(anchor, index);
      selected = new Set();
      for (let i = low; i <= high; i++) selected.add(i);
    } else {
      anchor = index;
      selected = new Set([index]);
    }
    render();
    cards[index].scrollIntoView({ block: "nearest" });
  }

  function chosen() {
    return Array.from(selected).sort(function (a, b) { return a - b; }).map(function (i) { return cards[i]; });
  }

  // A card's grade: "" when it has none (an older page may still say "ungraded").
  function gradeOf(card) {
    const grade = card.dataset.grade || "";
    return grade === "ungraded" ? "" : grade;
  }

  // `source` is who gave the grade shown: "person" for one just recorded, the card's own before an undo.
  function show(card, grade, reason, source) {
    if (grade === "ungraded") grade = "";
    card.className = card.className.replace(/grade-\S+/, "grade-" + (grade || "none"));
    card.dataset.grade = grade || "";
    card.dataset.reason = reason || "";
    card.querySelector(".grade-text").textContent = grade || "ungraded";
    card.querySelector(".reason").textContent = reason || "";
    card.querySelector(".source").textContent = grade ? (source || "") : "";
    document.querySelectorAll('svg.plot .point[data-id="' + card.dataset.id + '"]').forEach(function (point) {
      point.setAttribute("class", point.getAttribute("class").replace(/grade-\S+/, "grade-" + (grade || "none")));
    });
  }

  async function post(url, fields) {
    const response = await fetch(url, {
      method: "POST", body: new URLSearchParams(fields), credentials: "same-origin",
      headers: { "Accept": "application/json" },
    });
    const text = await response.text();
    if (!response.ok) throw new Error(text.trim() || response.statusText);
    return JSON.parse(text);
  }

  // Record a flag on every selected frame; `fields(card)` gives grade, reason, note.
  async function record(fields, label) {
    if (!writable) { say("read-only: start obsarch serve --allow-write to grade", true); return; }
    const targets = chosen();
    const before = targets.map(function (card) {
      return [card, gradeOf(card), card.dataset.reason, card.querySelector(".source").textContent];
    });
    const made = [];
    try {
      for (const card of targets) {
        const values = fields(card);
        const answer = await post("/exposures/" + card.dataset.id + "/flags", values);
        made.push.apply(made, answer.flag_ids);
        show(card, answer.grade, answer.reason, "person");
      }
      undoStack.push({ flags: made, before: before });
      say(label + " on " + targets.length + " frame" + (targets.length > 1 ? "s" : "") + " (u to undo)");
    } catch (error) {
      if (made.length) undoStack.push({ flags: made, before: before });
      say(error.message, true);
    }
  }

  function grade(value) {
    record(function (card) {
      // A reason recorded before stays with a new grade only if the grade keeps its sense.
      return { grade: value, reason: value === gradeOf(card) ? card.dataset.reason : "" };
    }, value);
  }

  async function undo() {
    const last = undoStack.pop();
    if (!last) { say("nothing to undo"); return; }
    try {
      const answer = await post("/flags/retract", { ids: last.flags.join(",") });
      last.before.forEach(function (item) {
        // the grade now (a flag made since, elsewhere, is current), else the one shown before
        const now = (answer.current || {})[item[0].dataset.id];
        if (now) show(item[0], now.grade, now.reason, now.source); else show(item[0], item[1], item[2], item[3]);
      });
      say("undone: " + last.flags.length + " flag" + (last.flags.length > 1 ? "s" : "") + " taken back");
    } catch (error) {
      undoStack.push(last);
      say(error.message, true);
    }
  }

  function ask(focus) {
    if (!writable) { say("read-only: start obsarch serve --allow-write to grade", true); return; }
    const ungraded = chosen().filter(function (card) { return !gradeOf(card); });
    if (ungraded.length) { say("grade the frame first (1-4), then give a reason or a note", true); return; }
    annotate.dataset.mode = focus;
    // r chooses a reason (the frame's own shown first); n adds a note and keeps each frame's reason
    annotate.elements.reason.value = cards[cursor].dataset.reason || annotate.elements.reason.options[0].value;
    annotate.elements.reason.disabled = focus === "note";
    annotate.hidden = false;
    annotate.elements[focus].focus();
  }

  annotate.addEventListener("submit", function (event) {
    event.preventDefault();
    const reason = annotate.elements.reason.value, note = annotate.elements.note.value;
    const noteOnly = annotate.dataset.mode === "note";
    annotate.hidden = true;
    annotate.elements.note.value = "";
    record(function (card) {
      return { grade: gradeOf(card), reason: noteOnly ? card.dataset.reason : reason, note: note };
    }, noteOnly ? "note" : "reason " + reason);
  });
  annotate.querySelector(".cancel").addEventListener("click", function () { annotate.hidden = true; });
  annotate.addEventListener("keydown", function (event) {
    if (event.key === "Escape") annotate.hidden = true;
  });

  document.addEventListener("keydown", function (event) {
    if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;  // shift-j extends as shift-arrow does
    if (key === "j" || key === "ArrowRight" || key === "ArrowDown") select(cursor + 1, event.shiftKey);
    else if (key === "k" || key === "ArrowLeft" || key === "ArrowUp") select(cursor - 1, event.shiftKey);
    else if (key >= "1" && key <= String(grades.length)) grade(grades[Number(key) - 1]);
    else if (key === "r") ask("reason");
    else if (key === "n") ask("note");
    else if (key === "u") undo();
    else if (key === "Enter" && cards[cursor]) window.location = "/exposures/" + cards[cursor].dataset.id;
    else return;
    event.preventDefault();
  });

  cards.forEach(function (card, i) {
    card.addEventListener("click", function (event) {
      if (event.target.closest("a")) return;
      select(i, event.shiftKey);
    });
  });
  document.querySelectorAll("svg.plot .point").forEach(function (point) {
    point.addEventListener("click", function () {
      const index = cards.findIndex(function (card) { return card.dataset.id === point.dataset.id; });
      select(index, false);
    });
  });

  // Thumbnails arrive from the background worker: ask which are made, every two seconds.
  async function poll() {
    const waiting = Array.from(grid.querySelectorAll("[data-pending]"));
    if (!waiting.length) return;
    try {
      const ids = waiting.slice(0, 200).map(function (el) { return el.dataset.pending; }).join(",");
      const response = await fetch("/thumbnails/state?ids=" + ids, { credentials: "same-origin" });
      const states = await response.json();
      waiting.forEach(function (el) {
        const state = states[el.dataset.pending];
        if (!state || state.state === "pending") return;
        const holder = el.parentNode;
        if (state.state === "ready") {
          const img = document.createElement("img");
          img.src = "/exposures/" + el.dataset.pending + "/thumbnail.png";
          img.alt = "frame " + el.dataset.pending;
          holder.replaceChildren(img);
        } else {
          const p = document.createElement("p");
          p.className = "problem";
          p.textContent = state.reason;
          holder.replaceChildren(p);
        }
      });
    } catch (error) {
      say("thumbnails: " + error.message, true);
    }
    window.setTimeout(poll, 2000);
  }

  render();
  window.setTimeout(poll, 500);
})();
