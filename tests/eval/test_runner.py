"""ModelRunner.generate conventions (TensorRT-LLM's), sampling, the ckpt-run CLI and bad input."""

from __future__ import annotations

import json
import re
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ckpt_convert")

from ckpt_eval.backends import RunnerError  # noqa: E402
from ckpt_eval.run_cli import main  # noqa: E402
from ckpt_eval.runner import ModelRunner  # noqa: E402
from ckpt_eval.sampling import SamplingConfig, penalize, truncate  # noqa: E402
from ckptfmt import CheckpointError  # noqa: E402
from tests.eval.test_model_parity import Models, prompts  # noqa: E402

STEPS = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory.mktemp("eval-runner-models"))


@pytest.fixture(scope="module")
def runner(models):
    return ModelRunner.from_dir(models.checkpoint("llama-gqa"), device="cpu")


@pytest.fixture(scope="module")
def greedy(runner):
    return runner.generate(
        prompts(), max_new_tokens=STEPS, return_dict=True, output_log_probs=True, output_generation_logits=True
    )


# ---- output layout ---------------------------------------------------------------------------------
def test_output_layout(greedy):
    batch = prompts()
    ids, lengths = greedy["output_ids"], greedy["sequence_lengths"]
    assert ids.shape == (3, 1, max(map(len, batch)) + STEPS) and lengths.shape == (3, 1)
    for i, p in enumerate(batch):
        assert ids[i, 0, : len(p)].tolist() == p.tolist()
        assert int(lengths[i, 0]) == len(p) + STEPS
        assert (ids[i, 0, len(p) + STEPS :] == 0).all()  # pad_id defaults to 0 without end_id
    assert greedy["input_lengths"].tolist() == [len(p) for p in batch]


def test_plain_and_tuple_returns(runner, greedy):
    ids = runner.generate(prompts(), max_new_tokens=STEPS)
    assert torch.equal(ids, greedy["output_ids"])
    ids2, lengths = runner.generate(prompts(), max_new_tokens=STEPS, output_sequence_lengths=True)
    assert torch.equal(ids2, ids) and torch.equal(lengths, greedy["sequence_lengths"])


def test_end_id_stops_each_sequence(runner, greedy):
    batch = prompts()
    generated = [greedy["output_ids"][i, 0, len(p) : len(p) + STEPS].tolist() for i, p in enumerate(batch)]
    end_id = generated[0][4]  # sequence 0 ends at its fifth token
    out = runner.generate(batch, max_new_tokens=STEPS, end_id=end_id, pad_id=7, return_dict=True)
    for i, p in enumerate(batch):
        n = len(p)
        stop = generated[i].index(end_id) if end_id in generated[i] else STEPS
        assert int(out["sequence_lengths"][i, 0]) == n + stop
        row = out["output_ids"][i, 0].tolist()
        assert row[n : n + stop] == generated[i][:stop]
        if stop < STEPS:
            assert row[n + stop] == end_id and set(row[n + stop + 1 :]) <= {7}
    assert int(out["sequence_lengths"][0, 0]) == len(batch[0]) + generated[0].index(end_id)


def test_streaming_yields_every_step(runner, greedy):
    results = list(runner.generate(prompts(), max_new_tokens=STEPS, streaming=True, return_dict=True))
    assert len(results) == STEPS
    assert torch.equal(results[-1]["output_ids"], greedy["output_ids"])
    grown = [int(r["sequence_lengths"][0, 0]) for r in results]
    assert grown == list(range(len(prompts()[0]) + 1, len(prompts()[0]) + STEPS + 1))


def test_log_probs_of_greedy_tokens(greedy):
    logits = greedy["generation_logits"][:, 0]  # [batch, steps, vocab]
    expected = logits.log_softmax(-1).max(-1).values
    assert torch.allclose(greedy["log_probs"][:, 0], expected, atol=1e-5)
    assert torch.allclose(greedy["cum_log_probs"][:, 0], expected.sum(-1), atol=1e-4)


def test_tensorrt_llm_style_arguments(runner, greedy):
    class Sampling:  # duck-typed like TensorRT-LLM's SamplingConfig
        end_id, pad_id, max_new_tokens, top_k, temperature = None, None, STEPS, 1, 1.0

    out = runner.generate(
        prompts(),
        sampling_config=Sampling(),
        stop_words_list=None,
        bad_words_list=None,
        length_penalty=1.0,
        lora_uids=None,
        output_cum_log_probs=True,
        return_dict=True,
    )
    assert torch.equal(out["output_ids"], greedy["output_ids"])
    assert torch.allclose(out["cum_log_probs"], greedy["cum_log_probs"])
    with pytest.raises(RunnerError, match="stop_words_list=.* is not supported"):
        runner.generate(prompts(), stop_words_list=[[1]])
    with pytest.raises(RunnerError, match="unknown argument 'max_tokens'"):
        runner.generate(prompts(), max_tokens=3)


# ---- sampling --------------------------------------------------------------------------------------
def test_sampling_is_seeded_and_stays_in_top_k(runner, greedy):
    kwargs = dict(max_new_tokens=STEPS, temperature=1.5, top_k=5, return_dict=True, output_generation_logits=True)
    a = runner.generate(prompts(), random_seed=1, **kwargs)
    assert torch.equal(a["output_ids"], runner.generate(prompts(), random_seed=1, **kwargs)["output_ids"])
    assert not torch.equal(a["output_ids"], runner.generate(prompts(), random_seed=2, **kwargs)["output_ids"])
    assert not torch.equal(a["output_ids"], greedy["output_ids"])
    for i, p in enumerate(prompts()):
        chosen = a["output_ids"][i, 0, len(p) : len(p) + STEPS]
        top5 = a["generation_logits"][i, 0].topk(5, -1).indices
        assert (top5 == chosen[:, None]).any(-1).all()


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0, top_k=0), dict(top_k=0, top_p=1e-6), dict(top_k=1)])
def test_degenerate_sampling_is_greedy(runner, greedy, kwargs):
    out = runner.generate(prompts(), max_new_tokens=STEPS, random_seed=3, **kwargs)
    assert torch.equal(out, greedy["output_ids"])


def test_repetition_penalty_avoids_seen_tokens(runner):
    batch = prompts()
    out = runner.generate(batch, max_new_tokens=STEPS, repetition_penalty=1e6)
    for i, p in enumerate(batch):
        new = out[i, 0, len(p) : len(p) + STEPS].tolist()
        assert len(set(new)) == STEPS and not set(new) & set(p.tolist())


def test_truncate_and_penalize():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    assert torch.isinf(truncate(scores, 2, 0.0)).tolist() == [[True, False, False, True]]
    probs = scores.softmax(-1)[0]  # sorted: 3.0 (0.61), 2.0 (0.22), 1.0 (0.08), 0.5 (0.05)
    kept = ~torch.isinf(truncate(scores, 0, float(probs[1] + 0.01)))
    assert kept.tolist() == [[False, True, True, False]]
    seen = torch.tensor([[True, False, False, True]])
    assert penalize(torch.tensor([[2.0, 2.0, -2.0, -2.0]]), seen, 2.0).tolist() == [[1.0, 2.0, -2.0, -4.0]]
    with pytest.raises(RunnerError, match="top_p"):
        SamplingConfig(top_p=1.5)


# ---- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("batch", "kwargs", "message"),
    [
        ([torch.arange(120)], dict(max_new_tokens=16), "prompt 0: 120 tokens + 16 new tokens exceed"),
        ([torch.tensor([1, 2]), torch.tensor([3, 250])], {}, "prompt 1: token id 250 is outside the vocabulary"),
        ([torch.tensor([], dtype=torch.long)], {}, "prompt 0: expected a non-empty 1-D tensor"),
        ([], {}, "no prompts given"),
        ([torch.tensor([1, 2])], dict(num_beams=2), "beam search is not supported"),
        ([torch.tensor([1, 2])], dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    ],
)
def test_bad_generate_input(runner, batch, kwargs, message):
    with pytest.raises(RunnerError, match=re.escape(message)):
        runner.generate(batch, **kwargs)


def test_backend_errors(models):
    with pytest.raises(RunnerError, match="backend 'nope' is unknown"):
        ModelRunner.from_dir(models.checkpoint("gpt2"), backend="nope")
    with pytest.raises(RunnerError, match="CUDA is not available"):
        if torch.cuda.is_available():
            pytest.skip("has CUDA")
        ModelRunner.from_dir(models.checkpoint("gpt2"), device="cuda")
    with pytest.raises(RunnerError, match="cannot load with transformers"):
        ModelRunner.from_dir(models.checkpoint("gpt2"), backend="hf", device="cpu")
    with pytest.raises(RunnerError, match="not a Hugging Face model directory"):
        ModelRunner.from_dir(models.root, backend="hf", device="cpu")


def test_multi_rank_checkpoint_in_one_process(models):
    with pytest.raises(CheckpointError, match=r"world_size is 2 \(tp 2 x pp 1\) but 1 process\(es\) were launched"):
        ModelRunner.from_dir(models.checkpoint("gpt2", 2, 1), device="cpu")


def test_invalid_checkpoints(models, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(models.checkpoint("gpt2"), bad)
    with pytest.raises(CheckpointError, match="missing"):
        ModelRunner.from_dir(tmp_path / "nowhere", device="cpu")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new", "num_attention_heads": 5}))
    with pytest.raises(CheckpointError, match="num_attention_heads"):
        ModelRunner.from_dir(bad, device="cpu")
    (bad / "config.json").write_text(json.dumps({**config, "hidden_act": "mish"}))
    with pytest.raises(CheckpointError, match=r"config.json: size \d+ != \d+ in manifest.json"):
        ModelRunner.from_dir(bad, device="cpu")
    (bad / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="hidden_act 'mish' is not supported"):
        ModelRunner.from_dir(bad, device="cpu")
    rope = tmp_path / "rope"  # GPT-2's position table would turn a rope type back into learned positions
    shutil.copytree(models.checkpoint("llama-gqa"), rope)
    (rope / "manifest.json").unlink()
    rope_config = json.loads((rope / "config.json").read_text())
    (rope / "config.json").write_text(json.dumps({**rope_config, "rotary_scaling": {"type": "yarn", "factor": 2.0}}))
    with pytest.raises(CheckpointError, match="rotary_scaling"):
        ModelRunner.from_dir(rope, device="cpu")
    (bad / "config.json").write_text(json.dumps(config))
    with open(bad / "rank0.safetensors", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(CheckpointError, match="rank0.safetensors: truncated"):
        ModelRunner.from_dir(bad, device="cpu")


# ---- ckpt-run --------------------------------------------------------------------------------------
def word_tokenizer(directory) -> None:
    """A word-level tokenizer over the tiny vocabulary: ``w0`` ... ``w249``, eos ``w2``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(250)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w2", pad_token="w0")
    fast.save_pretrained(directory)


def test_ckpt_run_text_prompts(models, runner, tmp_path, capsys):
    word_tokenizer(tmp_path / "tok")
    ckpt = str(models.checkpoint("llama-gqa"))
    texts = ["w5 w6 w7 w8", "w100 w3"]
    assert (
        main(
            [
                "--checkpoint_dir",
                ckpt,
                "--tokenizer_dir",
                str(tmp_path / "tok"),
                "--input_text",
                *texts,
                "--max_output_len",
                "6",
                "--device",
                "cpu",
                "--end_id",
                "-1",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    expected = runner.generate([torch.tensor([5, 6, 7, 8]), torch.tensor([100, 3])], max_new_tokens=6)
    for i, text in enumerate(texts):
        assert lines[2 * i] == f"Input [Text {i}]: {json.dumps(text)}"
        words = " ".join(f"w{t}" for t in expected[i, 0, len(text.split()) : len(text.split()) + 6].tolist())
        assert lines[2 * i + 1] == f"Output [Text {i} Beam 0]: {json.dumps(words)}"


def test_ckpt_run_streams_one_prompt(models, tmp_path, capsys):
    word_tokenizer(tmp_path / "tok")
    common = [
        "--checkpoint_dir",
        str(models.checkpoint("gpt2")),
        "--tokenizer_dir",
        str(tmp_path / "tok"),
        "--input_text",
        "w9 w10 w11",
        "--max_output_len",
        "8",
        "--device",
        "cpu",
        "--end_id",
        "-1",
    ]
    assert main(common) == 0
    whole = capsys.readouterr().out.splitlines()[1]
    assert main([*common, "--streaming"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.strip() == json.loads(whole.split(": ", 1)[1])


def test_ckpt_run_token_file_on_both_backends(models, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("1,2,3,4,5\n9,8,7\n")
    args = ["--input_file", str(tmp_path / "p.csv"), "--max_output_len", "8", "--device", "cpu"]
    assert main(["--checkpoint_dir", str(models.checkpoint("falcon-new")), *args]) == 0
    ours = capsys.readouterr().out
    assert main(["--hf_model_dir", str(models.hf_dir("falcon-new")), *args]) == 0
    assert capsys.readouterr().out == ours and ours.count("Output [Text") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input_file", "/nonexistent.txt"], "error: /nonexistent.txt: cannot read"),
        (["--input_text", "w1"], "no tokenizer: .* holds no tokenizer files and no tokenizer/ folder; pass --tok"),
        # a checkpoint is no engine directory (or, without the trt backend, the backend is not there)
        (["--input_text", "w1", "--backend", "trt"], "backend 'trt' is not available yet|not an engine directory"),
    ],
)
def test_ckpt_run_errors_are_one_line(models, tmp_path, capsys, args, message):
    if "--backend" in args:
        word_tokenizer(tmp_path / "tok")
        args = [*args, "--tokenizer_dir", str(tmp_path / "tok")]
    ckpt = models.checkpoint("gpt2")
    capsys.readouterr()  # transformers' progress bars while the tiny model was made
    assert main(["--checkpoint_dir", str(ckpt), "--device", "cpu", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_ckpt_run_too_long_prompt(models, tmp_path, capsys):
    (tmp_path / "long.csv").write_text(",".join(["3"] * 126) + "\n")
    ckpt = models.checkpoint("opt")
    capsys.readouterr()  # transformers' progress bars while the tiny model was made
    assert (
        main(
            [
                "--checkpoint_dir",
                str(ckpt),
                "--input_file",
                str(tmp_path / "long.csv"),
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    assert capsys.readouterr().err == (
        "error: prompt 0: 126 tokens + 32 new tokens exceed the model's max_position_embeddings 128; "
        "pass --max_input_length 96 or less\n"
    )


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_tokens(models, greedy):
    """``compile=True`` (torch.compile of the one-token decode; CUDA graphs on GPU) changes no token."""
    compiled = ModelRunner.from_dir(models.checkpoint("llama-gqa"), device="cpu", compile=True)
    for _ in range(2):  # the second run reuses the cache buffers and the compiled graph
        assert torch.equal(compiled.generate(prompts(), max_new_tokens=STEPS), greedy["output_ids"])


@pytest.mark.slow
def test_compiled_decode_runs_a_smaller_batch_in_the_captured_one(models, runner):
    """A batch smaller than one the compiled step already ran (the last, partial batch of a summarize run) runs
    with idle cache rows in that step instead of compiling another; its tokens are the eager ones."""
    compiled = ModelRunner.from_dir(models.checkpoint("llama-gqa"), device="cpu", compile="default")
    batch = prompts()
    compiled.generate(batch, max_new_tokens=STEPS)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for part in (batch[1:], batch[:1]):
        want = runner.generate(part, max_new_tokens=STEPS)
        assert torch.equal(compiled.generate(part, max_new_tokens=STEPS), want)
        assert (compiled.model.rows, compiled.model.cache_rows) == (len(part), len(batch))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames  # nothing compiled again


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama-gqa", "opt"])
def test_compiled_prompts_give_the_eager_tokens_without_recompiling(models, family):
    """``compile_prompts`` (what ``--compile`` does on a GPU): prompts run through compiled layers, one graph
    for every layer, dynamic in length. Ragged prompts (the shifted causal path) and a batch of other lengths
    give the eager tokens and log-probs, and the second batch compiles nothing new (a batch of another size, or
    a KV cache grown for a longer batch, costs one recompile: the cache's shape is the graph's)."""
    eager = ModelRunner.from_dir(models.checkpoint(family), device="cpu")
    compiled = ModelRunner.from_dir(models.checkpoint(family), device="cpu")
    compiled.model.model.compile_prompts()
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    for seed in (1, 0):  # the longer batch first: the second one keeps its KV cache
        rows = [p[: 5 + 2 * i + seed] for i, p in enumerate(prompts(seed=seed))]
        kwargs = dict(max_new_tokens=STEPS, return_dict=True, output_log_probs=True)
        want, got = eager.generate(rows, **kwargs), compiled.generate(rows, **kwargs)
        assert torch.equal(got["output_ids"], want["output_ids"])
        torch.testing.assert_close(got["log_probs"], want["log_probs"], rtol=1e-4, atol=1e-4)
        if seed == 1:
            frames = counters["unique_graphs"]
            assert frames == before + 1  # one graph, which every layer reuses
    assert counters["unique_graphs"] == frames  # other lengths and batch: nothing compiled again


def test_a_prompt_the_compiler_fails_on_runs_eager_with_a_note(models, greedy, capsys):
    """A compiler failure on a prompt (here a backend that refuses every graph) is one note; that prompt and the
    later ones run through the eager layers, with the eager tokens."""

    def refuse(graph, inputs):
        raise RuntimeError("no graph today")

    runner = ModelRunner.from_dir(models.checkpoint("llama-gqa"), device="cpu")
    model = runner.model.model
    model.prompt_blocks = [torch.compile(layer, backend=refuse) for layer in model.transformer.blocks()]
    for _ in range(2):
        assert torch.equal(runner.generate(prompts(), max_new_tokens=STEPS), greedy["output_ids"])
    assert model.prompt_blocks is None
    err = capsys.readouterr().err
    assert err.count("note: --compile: prompts run eager (") == 1 and "no graph today" in err


@pytest.mark.slow
def test_ckpt_run_compile_flag_prints_the_eager_output(models, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("1,2,3,4,5\n9,8,7\n")
    args = ["--checkpoint_dir", str(models.checkpoint("llama-gqa")), "--input_file", str(tmp_path / "p.csv")]
    args += ["--max_output_len", "8", "--device", "cpu"]
    assert main(args) == 0
    eager = capsys.readouterr().out
    assert main([*args, "--compile"]) == 0
    assert capsys.readouterr().out == eager and eager.count("Output [Text") == 2


def test_ckpt_run_keeps_the_first_max_input_length_tokens(models, runner, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("11,12,13,14,15,16,17,18\n")
    assert (
        main(
            [
                "--checkpoint_dir",
                str(models.checkpoint("llama-gqa")),
                "--input_file",
                str(tmp_path / "p.csv"),
                "--max_input_length",
                "3",
                "--max_output_len",
                "5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    expected = runner.generate([torch.tensor([11, 12, 13])], max_new_tokens=5)[0, 0, 3:].tolist()
    assert capsys.readouterr().out.strip() == f"Output [Text 0 Beam 0]: {expected}"


def test_ckpt_run_finds_the_tokenizer_the_converter_copied(models, tmp_path, capsys):
    """Without --tokenizer_dir, ckpt-run reads <checkpoint>/tokenizer/ (where ckpt-convert puts it)."""
    word_tokenizer(tmp_path / "tok")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(models.checkpoint("llama-gqa"), ckpt)
    args = ["--input_text", "w5 w6 w7", "--max_output_len", "4", "--device", "cpu", "--end_id", "-1"]
    assert main(["--checkpoint_dir", str(ckpt), "--tokenizer_dir", str(tmp_path / "tok"), *args]) == 0
    explicit = capsys.readouterr().out
    shutil.copytree(tmp_path / "tok", ckpt / "tokenizer")
    assert main(["--checkpoint_dir", str(ckpt), *args]) == 0
    assert capsys.readouterr().out == explicit and "Output [Text 0 Beam 0]" in explicit


def flip_last_byte(path) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0x01]))


def test_ckpt_run_stops_on_a_corrupt_rank_file_unless_skip_checksum(models, tmp_path, capsys):
    """A flipped data byte (same size, valid header) fails the manifest's sha256 before any output."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(models.checkpoint("llama-gqa"), ckpt)
    flip_last_byte(ckpt / "rank0.safetensors")
    (tmp_path / "p.csv").write_text("1,2,3\n")
    args = ["--checkpoint_dir", str(ckpt), "--input_file", str(tmp_path / "p.csv"), "--max_output_len", "3"]
    assert main([*args, "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {ckpt / 'rank0.safetensors'}: sha256 checksum mismatch with manifest.json")
    assert main([*args, "--device", "cpu", "--skip_checksum"]) == 0
    assert capsys.readouterr().out.startswith("Output [Text 0 Beam 0]: ")


def test_streaming_output_waits_for_the_checksums(models, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(models.checkpoint("gpt2"), ckpt)
    flip_last_byte(ckpt / "rank0.safetensors")
    runner = ModelRunner.from_dir(ckpt, device="cpu")
    with pytest.raises(CheckpointError, match="rank0.safetensors: sha256 checksum mismatch"):
        next(runner.generate([torch.tensor([1, 2, 3])], max_new_tokens=3, streaming=True))
    unchecked = ModelRunner.from_dir(ckpt, device="cpu", checksums=False)
    assert len(list(unchecked.generate([torch.tensor([1, 2, 3])], max_new_tokens=3, streaming=True))) == 3
