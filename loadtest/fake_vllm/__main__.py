"""``python -m loadtest.fake_vllm``: serve the FAKE vLLM until SIGTERM (see ``server``)."""

from loadtest.fake_vllm.server import main

main()
