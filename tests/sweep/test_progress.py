"""`rfgan tune`'s line per finished trial."""

from rfgan.sweep.progress import trial_line


def test_a_trial_line_says_how_it_ended_its_score_and_what_it_tried():
    params = {"optim.lr_g": 0.000123456, "loss.lambda_adv": 0.5}
    last = {"epoch": 2, "val_ssim": 0.41234}
    assert trial_line("a1_00001", "DONE", last, params, 2) == (
        "trial a1_00001: done, 2/2 epochs, val_ssim 0.4123  (loss.lambda_adv=0.5  optim.lr_g=0.0001235)"
    )
    assert "stopped early after 1/4 epochs" in trial_line("a1_00002", "DONE", {"epoch": 1, "val_ssim": 0.3}, {}, 4)
    assert trial_line("a1_00003", "ERROR", {}, {}, 4) == "trial a1_00003: failed after 0 epoch(s), no val_ssim  ()"
