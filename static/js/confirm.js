// A form or button with data-confirm asks first, then posts with confirmed=1. Without JavaScript
// the unconfirmed post gets a confirmation page from the server instead, so either way nothing
// irreversible happens on one click. (htmx's hx-confirm only guards htmx requests, and htmx does not
// swap in the 4xx page a refusal answers with; these stay plain form posts.)
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = event.submitter?.dataset.confirm || form.dataset.confirm;
  if (!question) return;
  if (!window.confirm(question)) {
    event.preventDefault();
    return;
  }
  const confirmed = document.createElement("input");
  confirmed.type = "hidden";
  confirmed.name = "confirmed";
  confirmed.value = "1";
  form.appendChild(confirmed);
});
