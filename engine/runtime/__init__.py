"""The runtime: one data path for every flow (DESIGN §2).

trigger -> inbox (durable) -> worker: transform -> write each target -> ledger -> complete;
failures retried with backoff (transient) or dead-lettered (terminal, or out of retries).
"""

__all__: list[str] = []
