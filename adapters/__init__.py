"""Adapters: the on-disk contract, validation, the registry, the store and the admin client.

    contract.py    the on-disk contract as constants: file names, manifest keys, vLLM's
                   allowed ranks, the name rule (imported by gateway, trainer, loadtest, tests)
    errors.py      AdapterError(kind, message): the one error type, no HTTP status
    layout.py      what an adapter directory (and a base model directory) contains, read
                   without torch: PEFT config, safetensors header, weights sha256, manifest
    validation.py  the checks an adapter must pass before it is registered
    state.py       the lifecycle's states and allowed transitions
    db.py          SQLAlchemy 2 schema and engine set-up (SQLite by default, PostgreSQL too)
    registry.py    the registry: versions, active pointer, pin, last settled state
    store.py       validated, read-only, content-addressed copies: what engines load
    client.py      the one client of the gateway's admin API (CLI, trainer, loadtest, examples)

Used by the gateway's adapter lifecycle and by the trainer; nothing here imports the gateway,
talks to an engine or imports torch.
"""
