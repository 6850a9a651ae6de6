"""The trainer distils, checked in direction on a reduced budget: one short TSCD k=2 stage on the
embedded teacher gives a 2-step LoRA that beats the untrained teacher at the same two model calls
(1 DDIM step at cfg 3) on trajectory error and Fréchet distance to the teacher's many-step samples,
and reads as the captioned digit at least as often as the teacher without guidance at 2 steps
(the same LoRA weights off), judged by the independent reader, which training never sees."""

TRAIN_STEPS = 40


def test_two_step_lora_beats_teacher_at_equal_calls(tmp_path, tokenizer_path):
    from train.config import load_config
    from train.digits import load_digit_splits
    from train.grids import generate
    from train.metrics import digit_eval_set, digit_reader, frechet_distance, trajectory_error
    from train.trainer import Trainer

    stage = (
        "{name: tscd, segments: 2, steps: %d, loss: mse, consistency_weight: 1.0, adv_weight: 0.0, "
        "cfg_min: 3.0, cfg_max: 3.0, ema_decay: 0.9, noise_perturbation: 0.05}" % TRAIN_STEPS
    )
    overrides = [
        f"output={tmp_path}",
        f"model.tokenizer_path={tokenizer_path}",
        f"stages=[{stage}]",
        "data.batch_size=16",
        "threads=1",
        "progress=false",
        "checkpoint_every=0",
        "eval.enabled=false",
        "sample.steps=[2]",
        "sample.num=2",
        "sample.teacher_steps=2",
    ]
    trainer = Trainer(load_config("embedded", overrides=overrides))
    trainer.run()

    m = trainer.model
    labels, prompts, noise = digit_eval_set(10, 16, 4321)
    kw = dict(schedule=m.schedule, prediction_type=m.prediction_type)
    reader = digit_reader(16)
    with trainer.teacher(local=True) as teacher:
        ref = generate(teacher, trainer.conditioner, prompts, noise, steps=25, cfg=3.0, eta=0.0, **kw)
        teacher_2calls = generate(teacher, trainer.conditioner, prompts, noise, steps=1, cfg=3.0, eta=0.0, **kw)
        unguided_2 = generate(teacher, trainer.conditioner, prompts, noise, steps=2, cfg=1.0, eta=0.0, **kw)
    lora_2 = generate(trainer.base_unet, trainer.conditioner, prompts, noise, steps=2, cfg=1.0, eta=0.0, **kw)

    ref_f = reader.features(ref)
    assert trajectory_error(lora_2, ref) < trajectory_error(teacher_2calls, ref)
    assert frechet_distance(reader.features(lora_2), ref_f) < frechet_distance(reader.features(teacher_2calls), ref_f)
    # guidance is baked in: more digits read right than the same 2 steps without the LoRA and without cfg
    assert reader.adherence(lora_2, labels) >= reader.adherence(unguided_2, labels)
    assert reader.adherence(load_digit_splits(16)[1].images, load_digit_splits(16)[1].labels) > 0.95
