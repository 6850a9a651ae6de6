"""Control images in generate(): a ControlNet steers the image, strength 0 is exactly no control,
and every bad control input or ControlNet file gets one clear line (table-driven)."""

import pytest
import torch

from hypersd_demo.models import attach_controlnet, build_generator, tiny_components, tiny_controlnet
from hypersd_models.loading import ModelLoadError

SIZE = 32  # the tiny SD-shaped model: 4-channel latents, VAE factor 2


@pytest.fixture
def ctiny(tiny):
    return tiny_controlnet(tiny)


def _control(seed=0, channels=3, size=SIZE):
    return (torch.rand((channels, size, size), generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def test_control_steers_and_strength_zero_is_no_control(ctiny):
    gen, _ = build_generator(ctiny)
    plain = gen.generate("a cat", seed=1, height=SIZE, width=SIZE)
    a = gen.generate("a cat", seed=1, height=SIZE, width=SIZE, control_image=_control(0))
    a2 = gen.generate("a cat", seed=1, height=SIZE, width=SIZE, control_image=_control(0))
    b = gen.generate("a cat", seed=1, height=SIZE, width=SIZE, control_image=_control(1))
    off = gen.generate("a cat", seed=1, height=SIZE, width=SIZE, control_image=_control(0), control_strength=0.0)
    assert torch.equal(a, a2)  # deterministic
    assert not torch.equal(a, plain) and not torch.equal(a, b)  # the control image changes the image
    assert torch.equal(off, plain)  # zero residuals: exactly the uncontrolled image
    half = gen.generate("a cat", seed=1, height=SIZE, width=SIZE, control_image=_control(0), control_strength=0.5)
    d_half = (half.float() - plain.float()).abs().mean()
    d_full = (a.float() - plain.float()).abs().mean()
    assert 0 < d_half < d_full  # strength scales the effect


def test_control_batch_and_two_step(ctiny):
    gen, _ = build_generator(ctiny, steps=2)
    imgs = torch.stack([_control(0), _control(1)])
    out = gen.generate("a cat", seed=0, height=SIZE, width=SIZE, batch_size=2, control_image=imgs)
    assert out.shape == (2, SIZE, SIZE, 3) and not torch.equal(out[0], out[1])


@pytest.mark.parametrize(
    "control, strength, needle",
    [
        (_control(size=16), 1.0, "it must match the output size 32x32"),
        (_control(channels=1), 1.0, "has 1 channel.*takes 3"),
        (_control(channels=4), 1.0, "has 4 channel.*takes 3"),
        (torch.zeros(SIZE, SIZE), 1.0, r"must be \(C, H, W\) or \(B, C, H, W\)"),
        (torch.zeros(3, 3, SIZE, SIZE), 1.0, "batch is 3"),
        ([[0.0]], 1.0, "must be a torch tensor"),
        (_control() * 255, 1.0, r"finite values in \[0, 1\]"),
        (torch.full((3, SIZE, SIZE), float("nan")), 1.0, r"finite values in \[0, 1\]"),
        (torch.zeros(3, SIZE, SIZE, dtype=torch.uint8), 1.0, "must be floats"),
        (_control(), 3.0, r"control_strength must be a number in \[0, 2\]"),
        (_control(), float("nan"), "control_strength must be"),
        (_control(), "1", "control_strength must be"),
    ],
)
def test_bad_control_input(ctiny, control, strength, needle):
    gen, _ = build_generator(ctiny)
    with pytest.raises(ValueError, match=needle) as e:
        gen.generate("a cat", height=SIZE, width=SIZE, control_image=control, control_strength=strength)
    assert "\n" not in str(e.value)
    assert gen.generate("a cat", height=SIZE, width=SIZE, control_image=_control()).shape == (1, SIZE, SIZE, 3)


def test_control_without_controlnet(tiny):
    gen, _ = build_generator(tiny)
    with pytest.raises(ValueError, match="has no ControlNet .*--controlnet PATH"):
        gen.generate("a cat", height=SIZE, width=SIZE, control_image=_control())


def _other_controlnet(tokenizer_path, **unet_overrides):
    """A ControlNet of a UNet unlike the tiny SD one (another base model)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    cfg = dict(tiny_components(tokenizer_path).unet.config)
    cfg.update(unet_overrides)
    unet = UNet2DConditionModel.from_config(cfg)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tokenizer_path):
    from safetensors.torch import save_file

    tmp_path = tmp_path_factory.mktemp("controlnets")
    _other_controlnet(tokenizer_path, cross_attention_dim=16).save_pretrained(tmp_path / "xattn16")
    _other_controlnet(tokenizer_path, in_channels=1, out_channels=1).save_pretrained(tmp_path / "pixel")
    sd = _other_controlnet(tokenizer_path, block_out_channels=(16, 32)).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "narrow.safetensors"))
    save_file({"x": torch.zeros(2)}, str(tmp_path / "notcontrol.safetensors"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "model.pth").write_bytes(b"\x80\x04")
    return tmp_path


@pytest.mark.parametrize(
    "name, needle",
    [
        ("missing", "ControlNet not found: .*missing"),
        ("empty", "is not a diffusers ControlNet folder: it needs config.json"),
        ("model.pth", "only .safetensors ControlNets are loaded"),
        ("xattn16", "made for another base model: its cross_attention_dim is 16, the UNet's is 32"),
        ("pixel", "made for another base model: its in_channels is 1, the UNet's is 4"),
        ("narrow.safetensors", "narrow.safetensors was made for another base model"),
        ("notcontrol.safetensors", "is not a ControlNet"),
    ],
)
def test_bad_controlnet_files(tiny, bad_files, name, needle):
    with pytest.raises(ModelLoadError, match=needle) as e:
        attach_controlnet(tiny, bad_files / name)
    assert "\n" not in str(e.value)
    assert tiny.controlnet is None


def test_controlnet_file_round_trip(ctiny, tmp_path):
    """A ControlNet saved as a folder and as one diffusers-layout file loads back equal."""
    from safetensors.torch import save_file

    ctiny.controlnet.save_pretrained(tmp_path / "cn")
    save_file({k: v.contiguous() for k, v in ctiny.controlnet.state_dict().items()}, str(tmp_path / "cn.safetensors"))
    ref = ctiny.controlnet.state_dict()
    for p in (tmp_path / "cn", tmp_path / "cn.safetensors"):
        got = attach_controlnet(ctiny, p).controlnet.state_dict()
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


# -- the demo's /generate body: the drawing as a data URL ------------------------------------------
def _data_url(img, fmt="PNG"):
    import base64
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _body(**kw):
    import json

    return json.dumps(dict({"prompt": "a handwritten digit 7", "seed": 0, "seq": 1, "client": "t"}, **kw)).encode()


def test_control_field_is_parsed():
    from PIL import Image, ImageDraw

    from hypersd_demo.server import parse_generate_request

    img = Image.new("RGB", (256, 256))
    ImageDraw.Draw(img).line([(40, 40), (216, 40), (120, 230)], fill="white", width=40)
    *_, control, strength = parse_generate_request(_body(control=_data_url(img), strength=0.5), (1, 16))
    assert control.shape == (1, 1, 16, 16) and set(control.unique().tolist()) == {0.0, 1.0}
    assert control[0, 0, 2, 8] == 1 and control[0, 0, 8, 1] == 0 and strength == 0.5  # the top bar, not the left edge
    *_, control, strength = parse_generate_request(_body(control=_data_url(img, "JPEG")), (3, 32))
    assert control.shape == (1, 3, 32, 32) and strength == 1.0 and 0 < float(control.mean()) < 1
    assert parse_generate_request(_body(), (1, 16))[4] is None  # no drawing: no control


@pytest.mark.parametrize(
    "kw, control, status, needle",
    [
        ({"control": 5}, (1, 16), 400, "control must be a PNG or JPEG data URL"),
        ({"control": "data:text/plain;base64,aGk="}, (1, 16), 400, "control must be a PNG or JPEG data URL"),
        ({"control": "data:image/png;base64,@@@"}, (1, 16), 400, "control is not valid base64"),
        ({"control": "data:image/png;base64,aGVsbG8="}, (1, 16), 400, "not a readable PNG or JPEG"),
        ({"control": "big"}, (1, 16), 413, "the limit is 4096 a side"),
        ({"control": "data:image/png;base64,aGk="}, None, 400, "no ControlNet: start it with --controlnet PATH"),
        ({"strength": 3}, (1, 16), 400, r"strength must be a number in \[0, 2\]"),
        ({"strength": True}, (1, 16), 400, "strength must be a number"),
    ],
)
def test_bad_control_field(kw, control, status, needle):
    from PIL import Image

    from hypersd_demo.server import BadRequest, parse_generate_request

    if kw.get("control") == "big":
        kw = {"control": _data_url(Image.new("L", (4097, 8)))}
    with pytest.raises(BadRequest, match=needle) as e:
        parse_generate_request(_body(**kw), control)
    assert e.value.status == status and "\n" not in str(e.value)


@pytest.mark.parametrize("steps", [1, 2])
def test_control_core_compiles_as_one_graph(ctiny, steps):
    """With a ControlNet the sampling core still traces without graph breaks, and a new control
    image or strength reuses the graph (they live in static buffers)."""
    gen, _ = build_generator(ctiny, steps=steps, eta=0.5)
    ref = gen.generate("a cat", seed=3, height=SIZE, width=SIZE, control_image=_control(0), control_strength=0.7)
    buf = gen._buffers[(1, SIZE, SIZE, "control")]
    core = torch.compile(gen.render_core, fullgraph=True, backend="eager", dynamic=False)
    img, finite = core(buf.noise, buf.step_noise, buf.cond)
    assert torch.equal(img, ref) and bool(finite)


def test_compiled_generator_follows_new_control_without_recompiling(ctiny):
    from torch._dynamo.testing import CompileCounter

    eager, _ = build_generator(ctiny)
    cnt = CompileCounter()
    gen, _ = build_generator(ctiny, backend=cnt)
    frames = []
    for i, s in ((0, 1.0), (1, 0.5), (2, 2.0)):
        kw = dict(seed=1, height=SIZE, width=SIZE, control_image=_control(i), control_strength=s)
        assert torch.equal(gen.generate("a cat", **kw), eager.generate("a cat", **kw))
        frames.append(cnt.frame_count)
    assert frames[0] > 0 and frames[0] == frames[-1]  # one graph for every control image and strength


def test_demo_takes_a_drawing_with_a_user_controlnet(ctiny, tmp_path):
    """The SD path of --controlnet PATH on the tiny SD-shaped model: the page offers the canvas,
    a drawing sent as a data URL steers the image, and no drawing means no control."""
    from PIL import Image, ImageDraw

    from hypersd_demo.models import load_components
    from hypersd_demo.server import DemoState, make_server, parse_generate_request

    ctiny.controlnet.save_pretrained(tmp_path / "cn")
    comp = load_components("tiny", controlnet=tmp_path / "cn")
    assert "ControlNet cn" in comp.description
    gen, _ = build_generator(comp)
    state = DemoState(gen, SIZE, comp.description)
    assert state.control == (3, SIZE)
    srv = make_server(state, 0)
    try:
        assert b'const CONTROL = {"size": 32}' in srv.page and b'id="canvas"' in srv.page
    finally:
        srv.server_close()
    img = Image.new("RGB", (256, 256))
    ImageDraw.Draw(img).line([(30, 30), (220, 200)], fill="white", width=20)
    _, _, _, _, control, strength = parse_generate_request(_body(control=_data_url(img)), state.control)
    drawn = state.generate("a cat", 0, "c", 1, control, strength)
    plain = state.generate("a cat", 0, "c", 2)
    assert drawn["control"] and not plain["control"] and drawn["image"] != plain["image"]


def test_page_without_controlnet_has_no_canvas(tiny):
    from hypersd_demo.server import DemoState, make_server

    srv = make_server(DemoState(build_generator(tiny)[0], SIZE, "tiny"), 0)
    try:
        assert b"const CONTROL = null" in srv.page
    finally:
        srv.server_close()
