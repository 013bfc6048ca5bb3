// Language switch of the course's book: each chapter page links to the same chapter in
// the other language (course/NN_x.html <-> course/zh/NN_x.html). Local file, no network.
document.addEventListener("DOMContentLoaded", () => {
  const match = window.location.pathname.match(/\/course\/(zh\/)?(\d\d_[^/]+\.html)$/);
  const article = document.querySelector("article") || document.querySelector("main");
  if (!match || !article) return;
  const chinese = Boolean(match[1]);
  const link = document.createElement("a");
  link.className = "mpcourse-langswitch";
  link.href = chinese ? "../" + match[2] : "zh/" + match[2];
  link.textContent = chinese ? "English" : "中文";
  link.lang = chinese ? "en" : "zh-CN";
  const bar = document.createElement("p");
  bar.style.textAlign = "right";
  bar.appendChild(link);
  article.prepend(bar);
});
