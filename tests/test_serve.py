"""`hsrm serve` (issue 20): the real server as a subprocess on a free loopback port, spoken to over
HTTP with the standard library. One server serves the whole module (startup costs seconds); the
SIGTERM test starts its own, and two tests run the app in-process with a loader they control (503
while loading, 504 on a request that waits too long)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import random
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO_ROOT
from hsrm.client import RemoteRewardError, RemoteRewardScorer
from hsrm.data.messages import to_messages
from hsrm.data.render import render_text
from hsrm.engine import padding_runs
from hsrm.scoring import RewardScorer
from hsrm.serve import RewardBatcher, ServeOptions, create_app, listening_socket, serve_options
from hsrm.testing import ServeProcess

MAX_LENGTH = 64
MAX_SEQUENCES = 16
MAX_BODY_BYTES = 20_000
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two CI cores, shared with the test process
SERVER_FLAGS = [
    "--max-length",
    str(MAX_LENGTH),
    "--max-wait-ms",
    "20",
    "--max-sequences",
    str(MAX_SEQUENCES),
    "--max_body_bytes",
    str(MAX_BODY_BYTES),
]  # both spellings, as users will type them

PROMPTS = [
    "How do I bake bread?",
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say thank you."},
        {"role": "assistant", "content": "Thank you."},
        {"role": "user", "content": "Again, please."},
    ],
    "Python list?",
    "Numbers please",
]
RESPONSES = [
    "Mix flour, water, yeast and salt, knead, then bake.",
    "Paris.",
    "Thank you!",
    "print([1, 2, 3])",
    "0 1 2 3 4 5 6 7 8 9 " * 12,
]  # the last one is cut from the left at MAX_LENGTH tokens


# ------------------------------------------------------------------------------------ helpers
def request(
    url: str, path: str, body: bytes | dict | list | None = None, method: str | None = None
) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path,
        data=data,
        method=method or ("POST" if data is not None else "GET"),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def assert_close(got, expected, tolerance=1e-5):
    assert len(got) == len(expected)
    worst = max(abs(a - b) for a, b in zip(got, expected))
    assert worst <= tolerance, (got, expected)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    process = ServeProcess(["--model", str(tiny_model_dir), *SERVER_FLAGS], env=ONE_THREAD)
    yield process
    assert process.stop() == 0, process.output()


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return RewardScorer(str(tiny_model_dir), max_length=MAX_LENGTH, device="cpu")


# ------------------------------------------------------------------------------------ answers
def test_score_equals_reward_scorer(server, scorer):
    status, body = request(server.url, "/score", {"prompts": PROMPTS, "responses": RESPONSES})
    assert status == 200, body
    assert_close(body["rewards"], scorer.score(PROMPTS, RESPONSES))
    assert len(set(body["rewards"])) == len(RESPONSES)  # a constant answer would not pass for a reward model


def test_get_reward_scores_the_text_as_given_and_ignores_other_keys(server, scorer):
    """OpenRLHF sends the formatted conversation (and `prompts`, `labels`, which are not ours to use)."""
    texts = [render_text(scorer.tokenizer, to_messages(p), r) for p, r in zip(PROMPTS, RESPONSES)]
    status, body = request(server.url, "/get_reward", {"query": texts, "prompts": ["ignored"], "labels": [1]})
    assert status == 200, body
    assert_close(body["rewards"], scorer.score(PROMPTS, RESPONSES))
    # A text is scored as given: no template, no special token added, cut from the left.
    raw = "The quick brown fox jumps over the lazy dog. " * 10
    ids = scorer.tokenizer(raw, add_special_tokens=False)["input_ids"]
    assert len(ids) > MAX_LENGTH
    status, body = request(server.url, "/get_reward", {"query": [raw]})
    assert status == 200 and body["rewards"] != scorer.score_ids([ids[:MAX_LENGTH]]).tolist()
    assert_close(body["rewards"], scorer.score_ids([ids[-MAX_LENGTH:]]).tolist())


def test_sixteen_clients_each_get_their_own_rewards_whatever_they_were_batched_with(server, scorer):
    rng = random.Random(0)
    words = "flour water yeast salt knead bake Paris France thank you sorry good bad great terrible".split()
    pool = [(rng.choice(PROMPTS), " ".join(rng.choices(words, k=rng.randint(1, 40)))) for _ in range(40)]
    requests = [rng.sample(pool, rng.randint(1, 6)) for _ in range(48)]
    solo = [scorer.score([p for p, _ in pairs], [r for _, r in pairs]) for pairs in requests]

    def send(pairs):
        return request(server.url, "/score", {"prompts": [p for p, _ in pairs], "responses": [r for _, r in pairs]})

    with ThreadPoolExecutor(16) as pool_of_clients:
        answers = list(pool_of_clients.map(send, requests))
    for (status, body), expected in zip(answers, solo):
        assert status == 200, body
        assert_close(body["rewards"], expected)
    counts = request(server.url, "/info")[1]["counts"]
    assert counts["most_requests_in_a_batch"] > 1, counts  # requests really were merged
    assert counts["batches"] < counts["requests"], counts


def test_info_reports_the_record_the_engine_and_the_limits(server):
    status, info = request(server.url, "/info")
    assert status == 200
    assert (
        info["max_length"] == MAX_LENGTH and info["attributes"] == ["reward"] and info["record"]["format_version"] == 1
    )
    assert info["engine"] == {"layout": "padded", "device": "cpu", "dtype": "float32", "batch_size": 8}
    assert info["limits"]["max_sequences"] == MAX_SEQUENCES and info["limits"]["max_body_bytes"] == MAX_BODY_BYTES


# ------------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    ("/score", b'{"prompts": ["a"', 400, "not valid JSON"),
    ("/score", b"\xff\xfe\x00", 400, "not valid JSON"),
    ("/score", [1, 2], 422, "JSON object"),
    ("/score", {"responses": ["x"]}, 422, "'prompts' is missing"),
    ("/score", {"prompts": "hi", "responses": ["x"]}, 422, "'prompts' must be an array"),
    ("/score", {"prompts": [], "responses": []}, 422, "'prompts' is empty"),
    ("/score", {"prompts": ["a", "b"], "responses": ["x"]}, 422, "pair up"),
    ("/score", {"prompts": ["a"], "responses": [3]}, 422, "responses[0]"),
    ("/score", {"prompts": ["a", [{"role": "robot", "content": "x"}]], "responses": ["x", "y"]}, 422, "prompts[1]"),
    ("/score", {"prompts": [""], "responses": ["x"]}, 422, "prompts[0]"),
    (
        "/score",
        {"prompts": ["a"] * (MAX_SEQUENCES + 1), "responses": ["b"] * (MAX_SEQUENCES + 1)},
        413,
        f"at most {MAX_SEQUENCES}",
    ),
    ("/get_reward", {"queries": ["x"]}, 422, "'query' is missing"),
    ("/get_reward", {"query": ["ok", None]}, 422, "query[1]"),
    ("/get_reward", {"query": [""]}, 422, "query[0]"),
    ("/get_reward", {"query": ["x"] * (MAX_SEQUENCES + 1)}, 413, f"at most {MAX_SEQUENCES}"),
    ("/get_reward", {"query": ["x" * (MAX_BODY_BYTES + 1)]}, 413, f"at most {MAX_BODY_BYTES}"),
]


@pytest.mark.parametrize(
    "path, body, status, message", BAD_INPUT, ids=[f"{i}-{case[3]}" for i, case in enumerate(BAD_INPUT)]
)
def test_bad_input_is_answered_with_its_status_and_the_server_stays_healthy(server, path, body, status, message):
    got, answer = request(server.url, path, body)
    assert (got, message in answer.get("detail", "")) == (status, True), answer
    assert request(server.url, "/health") == (200, {"status": "ok"})


def test_a_conversation_the_chat_template_refuses_is_a_422_naming_the_prompt(scorer):
    from hsrm.serve import RequestError, encode_score_body

    template = scorer.tokenizer.chat_template
    scorer.tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}" + template
    )
    try:
        with pytest.raises(
            RequestError, match=r"prompts\[1\]: the reward model's chat template refuses .*no system turns"
        ) as raised:
            encode_score_body(scorer, {"prompts": [PROMPTS[0], PROMPTS[2]], "responses": ["a", "b"]}, MAX_SEQUENCES)
        assert raised.value.status == 422
    finally:
        scorer.tokenizer.chat_template = template


def test_a_chunked_body_over_the_limit_is_refused_too(server):
    """No Content-Length to check up front: the limit is counted while reading."""
    connection = http.client.HTTPConnection(*server.host_port, timeout=30)
    chunks = iter([b'{"query": ["', b"x" * (MAX_BODY_BYTES + 10), b'"]}'])  # an iterator: http.client sends it chunked
    connection.request("POST", "/get_reward", body=chunks, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 413 and f"at most {MAX_BODY_BYTES}" in json.loads(response.read())["detail"]
    connection.close()
    assert request(server.url, "/get_reward", {"query": ["still here"]})[0] == 200


def test_wrong_methods_and_paths_get_http_answers(server):
    assert request(server.url, "/score", method="GET")[0] == 405
    assert request(server.url, "/nowhere")[0] == 404


def test_texts_are_never_logged_without_log_requests(server):
    marker = "zebra-marker-7f3a"
    assert request(server.url, "/score", {"prompts": [marker], "responses": [marker]})[0] == 200
    assert request(server.url, "/score", {"prompts": [marker], "responses": [3]})[0] == 422
    assert request(server.url, "/get_reward", {"query": [marker, 1]})[0] == 422
    assert request(server.url, "/score", f'{{"prompts": ["{marker}"'.encode())[0] == 400
    time.sleep(0.3)  # let the reader thread catch up
    assert "hsrm serve:" in server.output() and marker not in server.output()


# ------------------------------------------------------------------------------------ the client
def test_remote_reward_scorer_is_a_trl_reward_function_with_the_in_process_rewards(server, scorer):
    remote = RemoteRewardScorer(server.url)
    conversational = (
        [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "2+2?"}]],
        [[{"role": "assistant", "content": "Hello!"}], [{"role": "assistant", "content": "4"}]],
    )
    plain = (["Hi", "2+2?"], ["Hello!", "4"])
    for prompts, completions in (conversational, plain):
        assert_close(
            remote(prompts, completions, completion_ids=[[1], [2]], trainer_state=None), scorer(prompts, completions)
        )
    assert_close(remote.get_reward(["plain text"]), scorer.score_ids([scorer.encode_text("plain text")]).tolist())
    with pytest.raises(RemoteRewardError, match="422: 'prompts' has 2 items and 'responses' 1") as raised:
        remote.score(["a", "b"], ["x"])
    assert raised.value.status == 422


def test_remote_reward_scorer_retries_connection_errors_then_says_so():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    remote = RemoteRewardScorer(f"http://127.0.0.1:{port}", retries=2, retry_wait_s=0.01)
    with pytest.raises(RemoteRewardError, match="no answer after 3 tries.*Connection refused") as raised:
        remote.score(["a"], ["b"])
    assert raised.value.status is None


def test_the_client_imports_no_server_stack():
    """A trainer that calls a reward server (issue 28): ``hsrm.client`` loads neither FastAPI, uvicorn
    nor starlette. A fresh interpreter, because this test process has imported the server already."""
    import subprocess
    import sys

    probe = (
        "import sys; import hsrm.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_during_a_burst_answers_every_accepted_request_and_exits_0(tiny_model_dir, scorer):
    """16 clients send requests in a loop; SIGTERM arrives mid-burst. Every request the server took
    is answered with 200 and its own rewards (a client whose connection is refused or closed before
    the server read its request stops there): the server's counts of requests accepted for scoring
    and answered and the clients' count of 200s are one number, and the process exits 0. --log-requests puts the
    texts in the log."""
    # Batches wait 300 ms for company, so when the signal comes requests are still queued, past the
    # 0.1 s uvicorn pauses before it starts waiting for them: a server that dropped them would fail here.
    process = ServeProcess(
        ["--model", str(tiny_model_dir), *SERVER_FLAGS, "--log-requests", "--max-wait-ms", "300"], env=ONE_THREAD
    )
    expected = dict(zip(RESPONSES, scorer.score(PROMPTS, RESPONSES)))
    answered, unexpected, lock = [], [], threading.Lock()
    deadline = time.monotonic() + 30

    def client(index: int):
        rng = random.Random(index)
        while time.monotonic() < deadline:
            k = rng.randrange(len(PROMPTS))
            try:
                status, body = request(process.url, "/score", {"prompts": [PROMPTS[k]], "responses": [RESPONSES[k]]})
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
                return  # not accepted: the server had stopped listening, or never read this request
            with lock:
                if status == 200 and abs(body["rewards"][0] - expected[RESPONSES[k]]) <= 1e-5:
                    answered.append(k)
                else:
                    unexpected.append((status, body))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    code = process.stop()
    log = process.output()
    assert not unexpected, unexpected[:3]
    assert code == 0, log[-3000:]
    accepted, answered_by_server = map(
        int, re.search(r"stopped: accepted (\d+) requests for scoring, answered (\d+)", log).groups()
    )
    assert accepted == answered_by_server == len(answered) >= 40, log[-3000:]
    assert "Paris." in log  # --log-requests logs the texts


# ------------------------------------------------------------------------------------ in-process
@contextlib.contextmanager
def in_process_server(options: ServeOptions, load):
    """The app under uvicorn in a thread (no signal handling there), with a loader the test controls."""
    import uvicorn

    app = create_app(options, load)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    sock = config.bind_socket()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.service
    finally:
        server.should_exit = True
        thread.join(30)


def test_health_is_503_until_the_model_is_loaded(tiny_model_dir):
    loaded = threading.Event()

    def slow_load():
        loaded.wait(30)
        return RewardScorer(str(tiny_model_dir), max_length=MAX_LENGTH, device="cpu")

    with in_process_server(ServeOptions(model=str(tiny_model_dir)), slow_load) as (url, _):
        assert request(url, "/health") == (503, {"status": "loading"})
        assert request(url, "/score", {"prompts": ["a"], "responses": ["b"]}) == (
            503,
            {"detail": "the reward model is loading"},
        )
        assert request(url, "/info")[0] == 503
        with pytest.raises(RemoteRewardError, match="503: the reward model is loading"):
            RemoteRewardScorer(url, retries=0).score(["a"], ["b"])
        loaded.set()
        assert RemoteRewardScorer(url).wait_until_ready(30)["max_length"] == MAX_LENGTH
        assert request(url, "/health") == (200, {"status": "ok"})


def test_a_request_that_waits_too_long_gets_504_and_the_server_goes_on(tiny_model_dir):
    release = threading.Event()

    def load_with_a_stuck_first_batch():
        scorer = RewardScorer(str(tiny_model_dir), max_length=MAX_LENGTH, device="cpu")
        score_ids = scorer.score_ids

        def first_batch_stuck(sequences, **kwargs):
            release.wait(30)
            return score_ids(sequences, **kwargs)

        scorer.score_ids = first_batch_stuck
        return scorer

    options = ServeOptions(model=str(tiny_model_dir), request_timeout_s=0.5)
    with in_process_server(options, load_with_a_stuck_first_batch) as (url, service):
        RemoteRewardScorer(url).wait_until_ready(30)
        status, body = request(url, "/score", {"prompts": ["a"], "responses": ["b"]})
        assert status == 504 and "no rewards within 0.5 s" in body["detail"]
        release.set()
        status, body = request(url, "/score", {"prompts": PROMPTS, "responses": RESPONSES})
        assert status == 200 and len(body["rewards"]) == len(PROMPTS)
        assert request(url, "/health")[0] == 200


def test_a_non_finite_reward_is_a_500_naming_the_item_and_the_server_goes_on(tiny_model_dir):
    import torch

    def load_with_an_overflowing_second_item():
        scorer = RewardScorer(str(tiny_model_dir), max_length=MAX_LENGTH, device="cpu")
        score_ids, overflowing = scorer.score_ids, scorer.encode(PROMPTS[1], RESPONSES[1])

        def second_is_nan(sequences, **kwargs):  # by content: the server may split a merge over several calls
            rewards = score_ids(sequences, **kwargs)
            return torch.where(torch.tensor([list(s) == overflowing for s in sequences]), torch.nan, rewards)

        scorer.score_ids = second_is_nan
        return scorer

    with in_process_server(ServeOptions(model=str(tiny_model_dir)), load_with_an_overflowing_second_item) as (url, _):
        RemoteRewardScorer(url).wait_until_ready(30)
        status, body = request(url, "/score", {"prompts": PROMPTS[:3], "responses": RESPONSES[:3]})
        assert status == 500 and "non-finite reward (NaN or infinity) for item(s) [1]" in body["detail"]
        status, body = request(url, "/score", {"prompts": PROMPTS[2:4], "responses": RESPONSES[2:4]})
        assert status == 200 and len(body["rewards"]) == 2
        assert request(url, "/health")[0] == 200


def test_a_model_that_fails_to_load_ends_the_command_with_its_error(tmp_path, capsys):
    from hsrm.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_options_take_both_spellings_and_refuse_nonsense():
    options = serve_options(["--model", "m", "--max-batch-tokens", "512", "--max_wait_ms", "2.5", "--log-requests"])
    assert (options.max_tokens, options.max_wait_ms, options.log_requests, options.host) == (
        512,
        2.5,
        True,
        "127.0.0.1",
    )
    assert serve_options(["--model", "m", "--max_batch_tokens", "7"]).max_tokens == 7
    for bad, message in (
        (["--max-batch-tokens", "0"], "--max-tokens must be a positive whole number"),
        (["--max-wait-ms", "-1"], "--max-wait-ms must be ≥ 0"),
        (["--port", "70000"], "--port"),
        (["--dtype", "float8"], "--dtype: invalid choice: 'float8'"),
    ):
        with pytest.raises(ValueError, match=message):
            serve_options(["--model", "m", *bad])


# ------------------------------------------------------------------------------------ the bench
def test_bench_serve_runs_at_a_tiny_size_and_the_server_agrees_with_the_engine(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_bench", REPO_ROOT / "bench" / "serve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(
        [
            "--requests",
            "6",
            "--pairs-per-request",
            "2",
            "--concurrency",
            "1,3",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--max-prompt-words",
            "16",
            "--max-response-words",
            "32",
            "--max-length",
            "128",
            "--max-batch-tokens",
            "4096",
            "--rounds",
            "1",
            "--output",
            str(tmp_path / "serve.json"),
        ]
    )
    assert json.loads((tmp_path / "serve.json").read_text()) == json.loads(json.dumps(result))
    assert [row["concurrency"] for row in result["server"]] == [1, 3]
    for row in result["server"]:
        assert row["requests"] == 6 and row["tokens_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert row["max_reward_difference"] <= 1e-5 and row["ratio_to_in_process"] > 0
        assert len(row["rounds"]) == 1 and row["in_process_tokens_per_s"] > 0 and 0 < row["engine_busy"] <= 1
    assert result["server_exit_code"] == 0
    one = result["server"][0]  # 1 client has a goal (0.7), 3 clients none
    assert result["goals"] == [
        {"concurrency": 1, "ratio": one["ratio_to_in_process"], "needed": 0.7, "met": one["met"]}
    ]
    assert result["server"][1]["goal"] is None and result["server"][1]["met"] is None
    for round_ in one["rounds"]:  # real tokens per CPU second of each side (Linux /proc for the server's)
        assert round_["in_process_tokens_per_cpu_s"] > 0 and round_["server_tokens_per_cpu_s"] > 0


# ------------------------------------------------------------------------------------ round 2 (issue 33)
QWEN_STYLE = (  # ChatML with a default system turn, as Qwen2.5's template writes it
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="module", params=["smollm2", "qwen", "llama3"])
def templated_scorer(request, tmp_path_factory):
    from hsrm.tiny import build_tiny_llama, build_tiny_tokenizer

    folder = tmp_path_factory.mktemp(request.param)
    tokenizer = build_tiny_tokenizer(folder)
    if request.param == "qwen":
        tokenizer.chat_template = QWEN_STYLE
    if request.param == "llama3":
        tokenizer.add_special_tokens(
            {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
        )
        tokenizer.eos_token = "<|eot_id|>"
        tokenizer.chat_template = LLAMA3_STYLE
    build_tiny_llama(folder, tokenizer=tokenizer, seed=4)
    return RewardScorer(str(folder), max_length=MAX_LENGTH, device="cpu")


def openrlhf_query(tokenizer, prompt: str, response: str, finished: bool = True) -> str:
    """What OpenRLHF sends to a remote reward model: decode(prompt_ids + response_ids), special tokens kept."""
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if finished:  # generation stopped at EOS; a response cut at the length limit has none
        response_ids.append(tokenizer.eos_token_id)
    return tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)


def test_get_reward_scores_openrlhf_queries_as_training_rendered_them(templated_scorer):
    """Before: a ChatML query ended at <|im_end|> without the template's "\\n": the reward was read one
    token early, 0.6–1.9 away from RewardScorer.score."""
    from hsrm.serve import encode_query_body, turn_end_of

    scorer = templated_scorer
    prompts, responses = ["How do I bake bread?", "Say yes."], ["Flour, water, yeast and salt.", "yes"]
    for finished in (True, False):
        queries = [openrlhf_query(scorer.tokenizer, p, r, finished) for p, r in zip(prompts, responses)]
        got = scorer.score_ids(encode_query_body(scorer, {"query": queries}, 16)).tolist()
        assert_close(got, scorer.score(prompts, responses))
        as_given = scorer.score_ids(scorer.encode_texts(queries)).tolist()
        if not finished or scorer.tokenizer.eos_token != turn_end_of(scorer.tokenizer).closer:  # not Llama-3's
            assert max(abs(a - b) for a, b in zip(as_given, got)) > 1e-4  # the completion changed what is read


def test_get_reward_answers_an_empty_query_and_openrlhf_fields(server, scorer):
    """OpenRLHF splits a sample's queries over its --reward.remote_url servers: one may get []."""
    assert request(server.url, "/get_reward", {"query": [], "prompts": [], "labels": []}) == (
        200,
        {"rewards": [], "scores": [], "extra_logs": {}},
    )
    status, body = request(server.url, "/get_reward", {"query": ["hello"], "prompts": ["p"], "labels": ["l"]})
    assert status == 200 and body["scores"] == body["rewards"] and body["extra_logs"] == {}


@pytest.mark.parametrize("path, body, field", [
    ("/get_reward", {"query": ["ok", "bad \ud800 text"]}, "query[1]"),
    ("/score", {"prompts": ["a"], "responses": ["\udfff"]}, "responses[0]"),
    ("/score", {"prompts": ["fine", "\ud800"], "responses": ["x", "y"]}, "prompts[1]"),
])  # fmt: skip
def test_a_lone_surrogate_is_a_422_naming_the_field(server, path, body, field):
    """Before: a plain-text 500 with an 80-line traceback."""
    status, answer = request(server.url, path, body)
    assert status == 422 and answer["detail"].startswith(f"{field}: not valid Unicode text"), answer
    assert request(server.url, "/health") == (200, {"status": "ok"})


def test_normalize_answers_the_standardised_reward_and_info_says_so(tiny_model_dir, tmp_path, scorer):
    import shutil

    from hsrm.record import read_record, write_record

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    record = read_record(model)
    record.reward_mean, record.reward_std = 0.25, 2.0
    write_record(model, record)
    with in_process_server(ServeOptions(model=str(model), normalize=True, max_length=MAX_LENGTH), None) as (url, _):
        while request(url, "/health")[0] != 200:
            time.sleep(0.05)
        status, body = request(url, "/score", {"prompts": PROMPTS[:2], "responses": RESPONSES[:2]})
        assert status == 200
        assert_close(body["rewards"], [(r - 0.25) / 2.0 for r in scorer.score(PROMPTS[:2], RESPONSES[:2])])
        assert request(url, "/info")[1]["rewards"] == {"normalized": True, "mean": 0.25, "std": 2.0}


def test_vllm_endpoints_answer_in_vllm_shapes_with_the_rewards_of_score(server, scorer):
    """verl's reward client posts /classify {"model", "input"} and reads data[-1]["probs"][-1]; vLLM's own
    clients post /classify or /pooling {"model", "input"} (one text or a list) and /v1/score {"text_1", "text_2"}."""
    texts = [render_text(scorer.tokenizer, to_messages(p), r) for p, r in zip(PROMPTS[:3], RESPONSES[:3])]
    expected = scorer.score(PROMPTS[:3], RESPONSES[:3])
    status, body = request(server.url, "/classify", {"model": "rm", "input": texts})
    assert status == 200, body
    assert set(body) == {"id", "object", "created", "model", "data", "usage"} and body["object"] == "list"
    assert body["model"] == "rm" and body["id"].startswith("classify-")
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and all(d["num_classes"] == 1 for d in body["data"])
    assert_close([d["probs"][-1] for d in body["data"]], expected)
    assert (
        body["usage"]["prompt_tokens"]
        == body["usage"]["total_tokens"]
        == sum(len(ids) for ids in scorer.encode_texts(texts))
    )
    status, one = request(server.url, "/v1/classify", {"model": "rm", "input": texts[0]})  # one text, not a list
    assert status == 200 and len(one["data"]) == 1
    # verl's reward loop, as it posts: one text, and use_activation (accepted, not used)
    status, verl = request(server.url, "/classify", {"model": "rm", "input": texts[1], "use_activation": False})
    assert status == 200 and len(verl["data"]) == 1
    assert_close([verl["data"][-1]["probs"][-1]], expected[1:2])
    assert_close([one["data"][-1]["probs"][-1]], expected[:1])
    status, pooled = request(server.url, "/pooling", {"model": "rm", "input": texts})
    assert status == 200 and [d["object"] for d in pooled["data"]] == ["pooling"] * 3
    assert_close([d["data"][0] for d in pooled["data"]], expected)
    status, scored = request(server.url, "/v1/score", {"model": "rm", "text_1": PROMPTS[0], "text_2": RESPONSES[:3]})
    assert status == 200 and [d["object"] for d in scored["data"]] == ["score"] * 3
    assert_close([d["score"] for d in scored["data"]], scorer.score([PROMPTS[0]] * 3, RESPONSES[:3]))
    status, refused = request(server.url, "/v1/score", {"text_1": ["a", "b"], "text_2": ["x", "y", "z"]})
    assert status == 422 and "give one or as many" in refused["detail"]


def held_scorer(tiny_model_dir, release: threading.Event, started: threading.Event):
    """A loader whose scorer blocks in its first batch until ``release``: the model is busy."""

    def load():
        scorer = RewardScorer(str(tiny_model_dir), max_length=MAX_LENGTH, device="cpu")
        score_ids = scorer.score_ids

        def held(sequences, **kwargs):
            started.set()
            release.wait(30)
            return score_ids(sequences, **kwargs)

        scorer.score_ids = held
        return scorer

    return load


def raw_post(url: str, path: str, body: bytes, send: int | None = None) -> socket.socket:
    """A client that sends ``send`` bytes of the body (all by default) and keeps the connection open."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body[: len(body) if send is None else send])
    return sock


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_half_sent_body_is_a_408_after_the_body_timeout(tiny_model_dir):
    """Before: 50 half-sent bodies stayed open past 20 s, and one stalled client held SIGTERM for 339 s."""
    options = ServeOptions(model=str(tiny_model_dir), body_timeout_s=0.5, max_length=MAX_LENGTH)
    with in_process_server(options, None) as (url, _):
        wait_until(lambda: request(url, "/health")[0] == 200)
        sock = raw_post(url, "/score", json.dumps({"prompts": ["a"], "responses": ["b"]}).encode(), send=5)
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer
            answer += chunk
        assert answer.decode().startswith("HTTP/1.1 408") and "--body-timeout-s" in answer.decode()
        assert time.monotonic() - started < 5
        sock.close()


def test_a_request_whose_client_left_is_dropped_before_scoring(tiny_model_dir, caplog):
    """Before: a request whose client had gone was still scored (7.1 s of model time) and counted as answered."""
    import logging

    release, started = threading.Event(), threading.Event()
    options = ServeOptions(model=str(tiny_model_dir), max_length=MAX_LENGTH)
    with (
        caplog.at_level(logging.INFO, logger="hsrm.serve"),
        in_process_server(options, held_scorer(tiny_model_dir, release, started)) as (url, service),
    ):
        wait_until(lambda: request(url, "/health")[0] == 200)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(request, url, "/score", {"prompts": ["a"], "responses": ["b"]})
            assert started.wait(10)  # the model is busy with the first request
            leaving = raw_post(url, "/score", json.dumps({"prompts": ["q"], "responses": ["gone"]}).encode())
            wait_until(lambda: service.accepted == 2)
            leaving.close()
            wait_until(lambda: service.dropped == 1)
            release.set()
            assert first.result(30)[0] == 200
        assert service.batcher.counts["requests"] == 1 and service.answered == 1  # the second was never scored
        assert request(url, "/info")[1]["counts"]["dropped_client_gone"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_full_queue_answers_429_with_retry_after(tiny_model_dir):
    release, started = threading.Event(), threading.Event()
    options = ServeOptions(model=str(tiny_model_dir), max_length=MAX_LENGTH, max_queued=1, max_wait_ms=0)
    with in_process_server(options, held_scorer(tiny_model_dir, release, started)) as (url, service):
        wait_until(lambda: request(url, "/health")[0] == 200)
        body = {"prompts": ["a"], "responses": ["b"]}
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(request, url, "/score", body)
            assert started.wait(10)
            queued = pool.submit(request, url, "/score", body)
            wait_until(lambda: service.accepted == 2)
            req = urllib.request.Request(url + "/score", data=json.dumps(body).encode(), method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=10)
            assert refused.value.code == 429 and int(refused.value.headers["Retry-After"]) >= 1
            assert "--max-queued" in json.loads(refused.value.read())["detail"]
            release.set()
            assert busy.result(30)[0] == 200 and queued.result(30)[0] == 200
        assert request(url, "/info")[1]["counts"]["refused_busy"] == 1


def test_a_client_that_leaves_mid_body_is_one_info_line(tiny_model_dir, caplog):
    """Before: every client disconnect logged a ~60-line ERROR traceback."""
    import logging

    options = ServeOptions(model=str(tiny_model_dir), max_length=MAX_LENGTH)
    with caplog.at_level(logging.INFO), in_process_server(options, None) as (url, service):
        wait_until(lambda: request(url, "/health")[0] == 200)
        raw_post(url, "/score", b'{"prompts": ["a"], "responses": ["b"]}', send=10).close()
        wait_until(lambda: service.gone == 1)
        assert request(url, "/health")[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("disconnected before its request was read" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------ low concurrency (issue 33, item 6)
def test_a_lone_request_does_not_wait_for_company(tiny_model_dir):
    """Before: with nothing else on its way a request still waited the whole --max-wait-ms (one
    client: on every request)."""
    options = ServeOptions(model=str(tiny_model_dir), max_length=MAX_LENGTH, max_wait_ms=5000)
    with in_process_server(options, None) as (url, _):
        wait_until(lambda: request(url, "/health")[0] == 200)
        for _ in range(2):  # the first forward passes allocate; time the second request
            started = time.monotonic()
            status, body = request(url, "/score", {"prompts": PROMPTS[:2], "responses": RESPONSES[:2]})
            took = time.monotonic() - started
        assert status == 200 and len(body["rewards"]) == 2
        assert took < 2.5, took  # the old server: at least 5 s


def test_answers_leave_without_waiting_for_the_clients_delayed_ack():
    """Before: the listening socket was made with protocol 0, and asyncio sets TCP_NODELAY only on
    sockets whose protocol is IPPROTO_TCP, so Nagle's algorithm held each answer's body until the
    client acknowledged its headers, which a keep-alive client delays by 40 ms on Linux: 42 ms of
    every 1-client request in bench/serve.py (~15 % of its wall time). uvicorn serves on this socket
    through ``loop.create_server(sock=...)``, as here."""
    sock = listening_socket("127.0.0.1", 0)

    async def nodelay_of_an_accepted_connection() -> int:
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()

        class Record(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(
                    transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                )

        server = await loop.create_server(Record, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            try:
                return await asyncio.wait_for(accepted, 10)
            finally:
                writer.close()

    assert asyncio.run(nodelay_of_an_accepted_connection()) == 1


def test_the_oldest_request_waits_for_one_that_is_being_read(scorer):
    batcher = RewardBatcher(lambda: scorer, max_batch_tokens=10**6, max_wait_s=5.0)
    batcher.start()
    try:
        wait_until(lambda: batcher.scorer is not None)
        ids = scorer.encode_many(PROMPTS[:2], RESPONSES[:2])
        arrival = batcher.arriving()  # a second request is being read
        first = batcher.submit([ids[0]])
        time.sleep(0.3)
        assert not first.done()  # it waits for the one on its way
        second = batcher.submit([ids[1]], arrival)  # submitting closes the arrival
        assert_close(first.result(10) + second.result(10), scorer.score_ids(ids).tolist())
        assert (batcher.counts["batches"], batcher.counts["most_requests_in_a_batch"]) == (1, 2)
        gone = batcher.arriving()  # one that fails while being read (a 4xx) no longer holds anyone
        batcher.arrived(gone)
        batcher.arrived(gone)  # closing twice is harmless
        started = time.monotonic()
        assert len(batcher.submit([ids[0]]).result(10)) == 1 and time.monotonic() - started < 2.5
    finally:
        batcher.stop(30)


def test_padding_runs_cut_where_the_lengths_jump():
    # sorted longest first: 300, 290 | 150 | 25, 22, 20 costs 64 + 2·300, 64 + 150, 64 + 3·25 = 1017
    # positions; one batch would cost 64 + 6·300 = 1864, each alone 6·64 + 807 = 1191, and
    # 300, 290, 150 | 25, 22, 20 costs 964 + 139 = 1103.
    assert padding_runs([300, 20, 290, 25, 22, 150], 8) == [[0, 2], [5], [3, 4, 1]]
    assert padding_runs([10] * 5, 2) == [[0, 1], [2, 3], [4]]  # never more than batch_size
    assert padding_runs([10] * 5, 8) == [[0, 1, 2, 3, 4]]  # equal lengths: no padding to save, one pass
    assert padding_runs([], 8) == []
    with pytest.raises(ValueError, match="batch_size"):
        padding_runs([1], 0)


def test_a_merge_is_cut_by_length_and_shared_prompts_stay_together(scorer):
    """On the CPU the engine scores a merge in one call: the sequences whose prompt it shares as
    continuations of one cached pass, the others cut by padding_runs, not padded to the merge's longest."""
    import torch

    from hsrm.engine import planned_batches

    batcher = RewardBatcher(lambda: scorer, max_batch_tokens=10**6, max_wait_s=0.0)
    batcher.start()
    try:
        wait_until(lambda: batcher.scorer is not None)
        prompt = "How do I bake bread with flour, water, yeast and salt?"
        group = scorer.encode_many([prompt] * 3, ["Knead it.", "Bake it at 220 degrees.", "Salt."])
        assert max(map(len, group)) < MAX_LENGTH  # not cut: the prompt (40 tokens) is long enough to share
        others = scorer.encode_many(["a", "b", "c"], ["yes", "no " * 10, "maybe " * 12])
        sequences = [others[0], group[0], others[1], group[1], group[2], others[2]]
        plan = planned_batches(
            scorer.model,
            sequences,
            "padded",
            pad_id=0,
            batch_size=scorer.batch_size,
            max_tokens=10**6,
            share_prompts=True,
            device=torch.device("cpu"),
        )
        with torch.inference_mode():
            parts = [indices for indices, _ in plan]
        expected = padding_runs([len(sequences[i]) for i in (0, 2, 5)], scorer.batch_size)
        assert parts[: len(expected)] == [[(0, 2, 5)[k] for k in run] for run in expected]
        assert sorted(i for part in parts[len(expected) :] for i in part) == [1, 3, 4]  # the group, continued
        future = batcher.submit(sequences)
        assert_close(future.result(30), scorer.score_ids(sequences).tolist())
    finally:
        batcher.stop(30)
