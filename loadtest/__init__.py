"""Load testing and the benchmark harness of lora-gateway.

Nothing here is imported by the gateway. Modules:

- :mod:`loadtest.fake_vllm`: the one FAKE vLLM (OpenAI + LoRA endpoints, no model) that answers
  instantly, for gateway-overhead benchmarks and for every test that needs a misbehaving engine.
- :mod:`loadtest.sampling`: which adapter each request asks for (uniform, weighted, Zipf).
- :mod:`loadtest.workload`: request bodies and SSE accounting shared by every load generator.
- :mod:`loadtest.locustfile` and :mod:`loadtest.run`: locust users and the headless runner.
- :mod:`loadtest.openloop`: the fixed-rate open-loop generator and the closed-loop saturator.
- :mod:`loadtest.bench` (+ ``procs``, ``litellm_proxy``, ``adapters_gen``, ``report``): the
  benchmark that puts the gateway beside direct vLLM and LiteLLM.
"""
