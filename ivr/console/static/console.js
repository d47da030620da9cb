// "listen": load the prompt's WAV (rendered by the robot's own synthesizer) into the row's <audio> and play it.
document.addEventListener("click", function (event) {
  const button = event.target.closest("button.listen");
  if (!button) return;
  const audio = button.parentElement.querySelector("audio");
  audio.src = button.dataset.src + "?t=" + Date.now();
  audio.hidden = false;
  audio.play().catch(function () { /* autoplay refused: the controls are there */ });
});
