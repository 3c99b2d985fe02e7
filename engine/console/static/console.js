// seamline console: the little the pages need beyond HTML (no framework, no build step).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // "select all" ticks every letter's box in its form
  for (const all of document.querySelectorAll("[data-select-all]")) {
    all.addEventListener("change", () => {
      for (const box of all.form.querySelectorAll('input[type=checkbox][name="id"]')) box.checked = all.checked;
    });
  }

  // "Back" on an error page goes back when there is a page to go back to
  for (const link of document.querySelectorAll("[data-back]")) {
    link.addEventListener("click", (event) => {
      if (history.length > 1) { event.preventDefault(); history.back(); }
    });
  }

  // the flows page reloads itself every 10 s while its box is ticked (remembered in this browser)
  const refresh = document.querySelector("[data-auto-refresh]");
  if (refresh) {
    const key = "seamline.autoRefresh";
    refresh.checked = localStorage.getItem(key) === "on";
    let timer = refresh.checked ? setTimeout(() => location.reload(), 10000) : null;
    refresh.addEventListener("change", () => {
      localStorage.setItem(key, refresh.checked ? "on" : "off");
      clearTimeout(timer);
      timer = refresh.checked ? setTimeout(() => location.reload(), 10000) : null;
    });
  }
});
