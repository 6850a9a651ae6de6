"""The embedded default's metric functions (also used by benchmarks/)."""

import torch

from train.metrics import frechet_distance, prompt_adherence, trajectory_error


def test_frechet_distance_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    b = torch.randn(4000, 3, generator=g)
    assert frechet_distance(a, a) < 1e-6
    assert frechet_distance(a, b) < 0.02
    shifted = frechet_distance(a, b + torch.tensor([2.0, 0.0, 0.0]))
    assert abs(shifted - 4.0) < 0.1  # |mu_a - mu_b|^2
    scaled = frechet_distance(a, 2 * b)  # Tr(S_a + S_b - 2 sqrt(S_a S_b)) = 3 * (1 + 4 - 4)
    assert abs(scaled - 3.0) < 0.15
    dead = torch.cat([a, torch.zeros(4000, 2)], 1)  # singular covariances (dead ReLU units) stay finite
    assert abs(frechet_distance(dead, dead)) < 1e-6


def test_adherence_and_trajectory_error():
    def classifier(x):  # reads the digit from the first pixel: value v in [-1, 1] -> round(4.5 (v + 1))
        return torch.nn.functional.one_hot((4.5 * (x.flatten(1)[:, 0] + 1)).round().long(), 10).float()

    digits = torch.tensor([3, 5, 7, 1])
    images = (digits.float() / 4.5 - 1).reshape(4, 1, 1, 1)
    assert prompt_adherence(classifier, images, torch.tensor([3, 5, 0, 1])) == 0.75
    ref = torch.zeros(2, 1, 2, 2)
    assert trajectory_error(ref, ref) == 0.0
    assert abs(trajectory_error(torch.full((2, 1, 2, 2), 0.5), ref) - 0.5) < 1e-7


def test_reader_reads_held_out_digits_and_is_deterministic():
    from train.digits import load_digit_splits
    from train.metrics import DigitReader, digit_reader

    train, test = load_digit_splits(16)
    reader = digit_reader(16)
    assert reader.adherence(test.images, test.labels) > 0.95  # real held-out digits: near 1
    again = DigitReader(train.images, train.labels)
    assert torch.equal(again.features(test.images[:20]), reader.features(test.images[:20]))
    # blank or noise images are not read as the captioned digit
    noise = torch.rand((200, 1, 16, 16), generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert reader.adherence(noise, torch.arange(10).repeat_interleave(20)) < 0.3
    assert reader.features(test.images).shape == (len(test.labels), 64)


def test_equal_calls_verdict_says_when_an_adherence_gap_is_noise():
    from train.evaluate import add_comparisons, adherence_gap

    assert adherence_gap(0.99, 1.0, 200) == {"lora_minus_teacher": -2, "of": 200, "p": 0.499}
    assert adherence_gap(0.80, 0.99, 200)["p"] < 0.001
    teacher = dict(kind="teacher", cfg=3.0, steps=2, nfe=4)
    rows = {
        "teacher DDIM 2 cfg 3": dict(teacher, adherence=1.0, frechet_teacher=1.7, trajectory_error=0.20),
        "stage k=4 LoRA 4": dict(kind="stage", nfe=4, adherence=0.99, frechet_teacher=0.4, trajectory_error=0.10),
    }
    out = {"rows": rows, "teacher_cfg": 3.0, "n_samples": 200}
    add_comparisons(out, [4])
    assert out["verdict"].endswith(
        "4 calls: mixed (2/3 to the LoRA), adherence -2 of 200 digits (p=0.50, not significant at n=200) "
        "(stage k=4 LoRA 4 vs teacher DDIM 2 cfg 3)"
    )
    rows["stage k=4 LoRA 4"]["adherence"] = 0.80
    add_comparisons(out, [4])
    assert "adherence -40 of 200 digits (p=0.00, significant)" in out["verdict"]


def test_verdict_names_the_one_step_sampler_row_when_both_one_call_rows_win():
    from train.evaluate import add_comparisons

    rows = {
        "teacher DDIM 1 cfg 1": dict(
            kind="teacher", cfg=1.0, steps=1, nfe=1, adherence=0.985, frechet_teacher=6.8, trajectory_error=0.35
        ),
        "student 1": dict(kind="student", nfe=1, adherence=1.0, frechet_teacher=4.7, trajectory_error=0.31),
        "student 1 t=800": dict(
            kind="student", nfe=1, adherence=0.99, frechet_teacher=1.7, trajectory_error=0.23, onestep_timestep=800
        ),
    }
    out = {"rows": rows, "teacher_cfg": 3.0, "n_samples": 200}
    add_comparisons(out, [1])
    assert "1 call: LoRA wins (student 1 t=800 vs teacher DDIM 1 cfg 1)" in out["verdict"]
    rows["student 1 t=800"]["trajectory_error"] = 0.4  # now only the TSCD sampler's row wins all three
    add_comparisons(out, [1])
    assert "1 call: LoRA wins (student 1 vs teacher DDIM 1 cfg 1)" in out["verdict"]
    # the tie-break reads the row's sampler, not its name
    rows["student 1 t=800"]["trajectory_error"] = 0.23
    rows["one step"] = rows.pop("student 1 t=800")
    add_comparisons(out, [1])
    assert "1 call: LoRA wins (one step vs teacher DDIM 1 cfg 1)" in out["verdict"]
