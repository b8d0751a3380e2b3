"""Locust users that load any OpenAI-compatible server: this gateway, vLLM, LiteLLM, the fake.

Each request asks for a model drawn from an adapter mix (:mod:`loadtest.sampling`): the names
given (``--model``, ``--adapters``, ``--adapter-prefix``/``--adapter-count``) or, with none, every
adapter the server lists at ``/v1/models`` (:mod:`loadtest.discovery`; ``--include-base`` adds the
base model). Each request is built
by a :class:`~loadtest.workload.Workload`. Streamed answers are read as they arrive; besides the
request itself (full time, ``response_length`` = chunks), each records custom locust entries:
``TTFT`` (time to first token) and ``ITL`` (one per gap between token chunks), so they appear in
the CSV, the HTML report and the summary like any request.

Run it with ``python -m loadtest run --host URL`` (:mod:`loadtest.run`), or by hand::

    locust -f loadtest/locustfile.py --headless -u 8 -t 30s --host http://127.0.0.1:8000

    locust -f loadtest/locustfile.py --headless -u 32 -r 32 -t 30s --host http://127.0.0.1:8000 \\
        --adapter-prefix legal --adapter-count 16 --distribution zipf --zipf-s 1.1 --stream
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task
from locust.env import Environment

from loadtest.discovery import DiscoveryError, discover_models
from loadtest.sampling import AdapterMix, AdapterSampler, Distribution, adapter_names, parse_weights
from loadtest.workload import Api, SseMeter, Workload

logger = logging.getLogger(__name__)

TTFT = "TTFT"
ITL = "ITL"


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("lora-gateway workload")
    group.add_argument(
        "--api",
        choices=[a.value for a in Api],
        default=Api.CHAT.value,
        help="chat, completion, or mixed (see --chat-share)",
    )
    group.add_argument("--chat-share", type=float, default=0.5)
    group.add_argument("--model", default="", help="model id when no adapters are given")
    group.add_argument("--adapters", default="", help="comma-separated adapter names")
    group.add_argument("--adapter-prefix", default="", help="names PREFIX-0..PREFIX-(N-1)")
    group.add_argument("--adapter-count", type=int, default=0)
    group.add_argument(
        "--include-base",
        action="store_true",
        default=False,
        help="with no model options: load the base model(s) too, not only the adapters",
    )
    group.add_argument(
        "--distribution",
        choices=[d.value for d in Distribution],
        default=Distribution.UNIFORM.value,
    )
    group.add_argument("--weights", default="", help="comma-separated, for --distribution weighted")
    group.add_argument("--zipf-s", type=float, default=1.0)
    group.add_argument("--prompt-words", type=int, default=32)
    group.add_argument("--max-tokens", type=int, default=16)
    group.add_argument("--stream", action="store_true", default=False)
    group.add_argument("--ignore-eos", action="store_true", default=False)
    group.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="total requests/s over all users; 0: as fast as they can",
    )
    group.add_argument("--api-key", default="", help="sent as a Bearer token")
    group.add_argument("--stats-per-model", action="store_true", default=False)
    group.add_argument("--seed", type=int, default=0)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """The parsed custom arguments, built once per locust process."""

    workload: Workload
    mix: AdapterMix
    rate: float
    headers: dict[str, str]
    stats_per_model: bool
    seed: int

    @classmethod
    def from_options(cls, options: Any, host: str | None = None) -> RunConfig:
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        names = adapter_names(options.adapters, options.adapter_prefix, options.adapter_count)
        if not names and options.model:
            names = [options.model]
        if not names:
            if not host:
                raise ValueError(
                    "give --host (models are discovered from /v1/models), --model, --adapters "
                    "or --adapter-prefix/--adapter-count"
                )
            names = discover_models(host, headers, include_base=options.include_base)
        mix = AdapterMix.build(
            names,
            options.distribution,
            weights=parse_weights(options.weights),
            zipf_s=options.zipf_s,
        )
        workload = Workload(
            api=Api(options.api),
            chat_share=options.chat_share,
            prompt_words=options.prompt_words,
            max_tokens=options.max_tokens,
            stream=options.stream,
            ignore_eos=options.ignore_eos,
        )
        if options.rate < 0:
            raise ValueError("--rate must be >= 0")
        return cls(workload, mix, options.rate, headers, options.stats_per_model, options.seed)


_configs: dict[int, RunConfig] = {}


def config_of(environment: Environment) -> RunConfig:
    key = id(environment)
    if key not in _configs:
        _configs[key] = RunConfig.from_options(environment.parsed_options, environment.host)
    return _configs[key]


@events.test_start.add_listener
def check_config(environment: Environment, **_: Any) -> None:
    """Build the config (discovering the models) once, before any user starts; a bad option or
    a server that cannot list its models ends the run with a clear message."""
    try:
        config = config_of(environment)
    except (ValueError, DiscoveryError) as exc:
        logger.error("lora-gateway workload: %s", exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            environment.runner.quit()
        return
    logger.info("lora-gateway workload over %s", ", ".join(config.mix.names))


def _read_events(response: Any, meter: SseMeter) -> None:
    """Feed the meter one SSE event at a time, as each arrives.

    ``iter_content(n)`` of locust's FastResponse blocks until n bytes or the end, which would
    make every TTFT equal the full time; geventhttpclient's ``readline`` returns as soon as the
    separator is in its buffer.
    """
    raw = response._response
    while True:
        event = raw.readline(b"\n\n")
        if not event:
            break
        meter.feed(event)
    meter.feed(raw.read())  # whatever did not end with a blank line (e.g. CRLF framing)


class OpenAIUser(FastHttpUser):
    """One simulated client: picks a model, sends a chat or completion, reads the answer."""

    # Connection reuse like a real SDK client; generous timeouts for a CPU engine under load.
    network_timeout = 300.0
    connection_timeout = 10.0
    _next_seed = 0

    def on_start(self) -> None:
        self.config = config_of(self.environment)
        OpenAIUser._next_seed += 1
        seed = self.config.seed * 1_000_003 + OpenAIUser._next_seed
        self.rng = random.Random(seed)
        self.sampler = AdapterSampler(self.config.mix, seed)
        users = max(1, getattr(self.environment.parsed_options, "num_users", 1) or 1)
        per_user = self.config.rate / users
        self._pace = constant_throughput(per_user) if per_user > 0 else None

    def wait_time(self) -> float:
        return float(self._pace(self)) if self._pace is not None else 0.0

    @task
    def generate(self) -> None:
        model = self.sampler.sample()
        api, path, body = self.config.workload.request(model, self.rng)
        mode = "stream" if self.config.workload.stream else "full"
        name = f"{api.value} {mode}" + (f" {model}" if self.config.stats_per_model else "")
        if self.config.workload.stream:
            self._streamed(path, body, name)
        else:
            self._full(path, body, name)

    def _full(self, path: str, body: dict[str, Any], name: str) -> None:
        with self.client.post(
            path, json=body, headers=self.config.headers, name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif b'"choices"' not in (response.content or b""):
                response.failure("answer without choices")
            else:
                response.success()

    def _streamed(self, path: str, body: dict[str, Any], name: str) -> None:
        meter = SseMeter()
        with self.client.post(
            path,
            json=body,
            headers=self.config.headers,
            name=name,
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            _read_events(response, meter)
            # With stream=True locust timed only the headers: report the whole answer.
            response.request_meta["response_time"] = (time.perf_counter() - meter.started) * 1e3
            response.request_meta["response_length"] = meter.chunks
            if meter.error is not None:
                response.failure(meter.error)
            elif not meter.done or meter.token_chunks == 0:
                response.failure(f"stream ended early ({meter.token_chunks} token chunks)")
            else:
                response.success()
        fire = self.environment.events.request.fire
        if meter.ttft_s is not None:
            fire(
                request_type=TTFT,
                name=name,
                response_time=meter.ttft_s * 1e3,
                response_length=0,
                exception=None,
                context={},
            )
        for gap in meter.gaps_s:
            fire(
                request_type=ITL,
                name=name,
                response_time=gap * 1e3,
                response_length=0,
                exception=None,
                context={},
            )
