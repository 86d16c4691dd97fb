"""Progress output: plain lines in a log, a tqdm bar on a terminal, units in the keys."""

import io

from sbs_jax.train import progress

METRICS = {"loss": 3.21, "label_loss": 1.03, "rationale_loss": 5.39, "examples_per_s": 41.25}


class Terminal(io.StringIO):
  def isatty(self):
    return True


class Log(io.StringIO):
  def isatty(self):
    return False


def test_plain_lines_in_a_log():
  out = Log()
  p = progress.StepProgress(total=4, start=0, stream=out)
  p.note("starting from a random init (seed 0)")
  for step in range(1, 5):
    p.step(step, METRICS if step % 2 == 0 else None)
  p.close()
  lines = out.getvalue().splitlines()
  assert lines[0] == "starting from a random init (seed 0)"
  assert lines[1].startswith("step 2/4: loss 3.2100 (label 1.0300, rationale 5.3900), "
                             "41.2 examples/s, ETA ")
  assert lines[2].startswith("step 4/4: ") and lines[2].endswith("ETA 0s")
  assert len(lines) == 3 and "\r" not in out.getvalue()


def test_a_bar_on_a_terminal():
  out = Terminal()
  p = progress.StepProgress(total=4, start=1, stream=out)
  for step in range(2, 5):
    p.step(step, METRICS)
  p.note("step 4: validation accuracy 12.50% (8 examples)")
  p.close()
  text = out.getvalue()
  assert "\r" in text and "4/4" in text and "loss=3.2100" in text
  assert "step 4: validation accuracy 12.50% (8 examples)\n" in text
  assert "step 2/4: loss" not in text  # the bar replaces the step lines


def test_accuracies_are_labelled_as_percent():
  assert progress.labelled({"accuracy": 8.19, "equation_accuracy": 50.0, "examples": 16}) == {
      "accuracy_pct": 8.19, "equation_accuracy_pct": 50.0, "examples": 16}
  assert progress.eval_line(100, "validation", {"accuracy": 41.2, "examples": 256}) == (
      "step 100: validation accuracy 41.20% (256 examples)")
  assert progress.duration(3725) == "1h02m" and progress.duration(245) == "4m05s"
