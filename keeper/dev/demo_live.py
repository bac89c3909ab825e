"""The workload that keeps coming while the demo's keeper runs.

Payers open a stream (on the price list of a payee that has one, else with a usage price of
their own) and an escrow that expires soon every `CHAIN_WORK_INTERVAL` seconds (`ChainWorkload`,
a thread: web3 here is synchronous and each transaction waits for its block), and
`usage_rows` makes the usage rows, naming an endpoint for streams on a price list, that go into
`usage_inbox` every few seconds.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from keeper.chain.deployment import Deployment
from keeper.dev.anvil import dev_key
from keeper.dev.demo_chain import DemoChain
from keeper.ops.deploy import Deployer

CHAIN_WORK_INTERVAL = 20.0
USAGE_LABELS = ("GET /v1/quote", "POST /v1/chat", "POST /v1/embed")
USAGE_UNITS = (10, 40, 120, 300, 25)

# Rounds of the live chain workload cycle through these (integers in token base units).
LIVE_RATES = (1_000, 2_500, 4_000)
LIVE_DEPOSITS = (500_000, 1_000_000, 1_500_000)
LIVE_PRICES = (25, 50, 100)
LIVE_ESCROWS = (1_000_000, 2_000_000, 5_000_000)
LIVE_TIMEOUTS = (15, 20, 30)


@dataclass
class LiveStream:
    """A stream the workload may send usage for: with an own usage price, or on a price list
    whose endpoints (names) its usage rows name."""

    id: int
    price: int
    endpoints: tuple[str, ...] = ()

    @property
    def billable(self) -> bool:
        """Whether usage on it is charged at all."""
        return bool(self.price or self.endpoints)


class ChainWorkload(threading.Thread):
    """Every `interval` seconds a payer opens a stream (on its payee's price list if it has
    one, in `price_lists`, else with a usage price) and an escrow that expires within seconds.
    What it did goes to `messages`; streams to `streams`."""

    def __init__(
        self,
        rpc_url: str,
        deployment: Deployment,
        payers: dict[str, int],
        payees: dict[str, int],
        *,
        amount: Callable[[int], str],
        streams: list[LiveStream],
        messages: queue.Queue[str],
        price_lists: dict[str, tuple[str, ...]] | None = None,
        interval: float = CHAIN_WORK_INTERVAL,
    ) -> None:
        super().__init__(name="demo-workload", daemon=True)
        self.rpc_url, self.deployment, self.interval = rpc_url, deployment, interval
        self.price_lists = price_lists or {}
        self.payers, self.payees = list(payers.items()), list(payees.items())
        self.amount, self.streams, self.messages = amount, streams, messages
        self.stopping = threading.Event()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the thread to stop after its current transaction, and wait for it."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        """One round per `interval` until `stop`; a failed round is reported, not fatal."""
        chain = DemoChain.connect(self.rpc_url, self.deployment)
        senders: dict[str, Deployer] = {}
        for round_no in itertools.count():
            if self.stopping.is_set():
                return
            payer, payer_index = self.payers[round_no % len(self.payers)]
            payee, payee_index = self.payees[(round_no + 1) % len(self.payees)]
            try:
                if payer not in senders:
                    senders[payer] = chain.sender(payer_index)
                self._round(round_no, chain, senders[payer], payer, payee, payee_index)
            except Exception as exc:
                # anvil going away at shutdown ends up here too; the supervisor decides.
                self.messages.put(f"workload: {payer}'s transaction failed: {exc}")
                senders.pop(payer, None)  # its nonce is read again next time
            self.stopping.wait(self.interval)

    def _round(
        self, n: int, chain: DemoChain, sender: Deployer, payer: str, payee: str, payee_index: int
    ) -> None:
        to = dev_key(payee_index).address
        rate, deposit = LIVE_RATES[n % 3], LIVE_DEPOSITS[n % 3]
        endpoints = self.price_lists.get(payee, ())
        price = 0 if endpoints else LIVE_PRICES[n % 3]
        stream_id = chain.open_stream(
            sender, to, rate, deposit, price_list=bool(endpoints), usage_price=price
        )
        self.streams.append(LiveStream(stream_id, price, endpoints))
        terms = (
            f"usage at {payee}'s price list" if endpoints else f"usage {self.amount(price)}/unit"
        )
        self.messages.put(
            f"workload: {payer} opened stream #{stream_id} to {payee}, "
            f"{self.amount(rate)}/s, deposit {self.amount(deposit)}, {terms}"
        )
        if self.stopping.is_set():
            return
        escrow, timeout = LIVE_ESCROWS[n % 3], LIVE_TIMEOUTS[n % 3]
        escrow_id, _ = chain.create_escrow(sender, to, escrow, timeout)
        self.messages.put(
            f"workload: {payer} created escrow #{escrow_id} of {self.amount(escrow)} "
            f"for {payee}, expires in {timeout}s (the keeper refunds it)"
        )


UsageColumns = tuple[list[str], list[str], list[str], list[str], list[str | None]]


def usage_rows(streams: list[LiveStream], start: int, count: int, run_id: str) -> UsageColumns:
    """`count` usage rows as a producer writes them (text columns: stream id, units, producer
    key, label, endpoint), for billable streams in turn. A stream on a price list names one of
    its endpoints (in turn); an own-price stream names none."""
    billable = [s for s in streams if s.billable]
    ids, units, keys, labels = [], [], [], []
    endpoints: list[str | None] = []
    for n in range(start, start + count if billable else start):
        stream = billable[n % len(billable)]
        ids.append(str(stream.id))
        units.append(str(USAGE_UNITS[n % len(USAGE_UNITS)]))
        keys.append(f"demo-{run_id}-{n}")
        if stream.endpoints:
            endpoint = stream.endpoints[(n // len(billable)) % len(stream.endpoints)]
            endpoints.append(endpoint)
            labels.append(endpoint)
        else:
            endpoints.append(None)
            labels.append(USAGE_LABELS[n % len(USAGE_LABELS)])
    return ids, units, keys, labels, endpoints
