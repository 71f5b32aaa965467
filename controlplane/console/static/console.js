// Live pages: the server pushes the re-rendered fragment over server-sent events whenever what it
// shows changes; the fragment is rendered and escaped on the server, so it is put in as it is.
document.addEventListener("DOMContentLoaded", () => {
  // a chosen file is read here and put in its textarea: the form sends text, never a file upload
  for (const input of document.querySelectorAll("input[type=file][data-fills]")) {
    input.addEventListener("change", async () => {
      const file = input.files[0];
      const target = document.querySelector(input.dataset.fills);
      if (file && target) target.value = await file.text();
    });
  }
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const events = new EventSource("/events?view=" + encodeURIComponent(live.dataset.live));
  events.addEventListener("live", (ev) => {
    live.innerHTML = ev.data;
    live.dataset.updated = String(Date.now());
    document.body.classList.remove("offline");
  });
  events.addEventListener("trouble", () => document.body.classList.add("offline"));
  events.onerror = () => document.body.classList.add("offline");
  // htmx requests carry the CSRF token too (every form also has it as a field)
  const csrf = document.querySelector('meta[name="csrf-token"]');
  document.body.addEventListener("htmx:configRequest", (ev) => {
    if (csrf) ev.detail.headers["X-CSRF-Token"] = csrf.content;
  });
});
