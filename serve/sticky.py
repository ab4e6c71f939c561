"""Sticky conversations: a conversation stays on the model that answered its last turn.

A conversation is named by the sha256 of its earlier non-assistant messages (role and content, in order):
the messages before the last one, without the assistant's answers, whose exact text clients re-send in
different shapes. After a turn is answered, the key of ``messages`` as a whole (assistant turns dropped) is
mapped to the model that answered, which is the key the next turn's earlier messages give. The next turn is
served by that model, unless it has left the catalog or the request's limits exclude it (then the policy
decides); when it fails upstream the fallback answers and the conversation moves to it. A sticky decision is
deterministic given the conversation, so it is logged with propensity 1.

The table is an in-memory LRU of ``max_conversations`` entries per replica. Metric
``router_rl_sticky_decisions{sticky="true"|"false"}``: chat decisions that followed a conversation or not;
the sticky share is ``true / (true + false)``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

from router_rl.serve.router import Decision


def _key(messages: list[Any]) -> str | None:
    turns = [
        [m.role, m.content] for m in messages if m.role != "assistant" and m.content not in (None, "", [])
    ]
    if not turns:
        return None
    return hashlib.sha256(json.dumps(turns, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def conversation_key(messages: list[Any]) -> str | None:
    """The key of the conversation this request continues: its earlier messages (None: a first turn)."""
    return _key(messages[:-1])


def next_turn_key(messages: list[Any]) -> str | None:
    """The key the next turn of this conversation will have (this request's messages, answers excluded)."""
    return _key(messages)


class StickyConversations:
    """An LRU map conversation key -> model that answered its last turn, with its metric."""

    def __init__(self, max_conversations: int, registry: Any) -> None:
        from prometheus_client import Counter

        self.max_conversations = int(max_conversations)
        self._table: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.decisions = Counter(
            "router_rl_sticky_decisions",
            "Chat decisions that kept the model of the conversation's last turn (sticky=true) or not",
            ["sticky"],
            registry=registry,
        )

    def model_for(self, key: str | None) -> str | None:
        if key is None:
            return None
        with self._lock:
            model = self._table.get(key)
            if model is not None:
                self._table.move_to_end(key)
            return model

    def remember(self, key: str | None, model: str | None) -> None:
        if key is None or not model:
            return
        with self._lock:
            self._table[key] = model
            self._table.move_to_end(key)
            while len(self._table) > self.max_conversations:
                self._table.popitem(last=False)

    def apply(self, decision: Decision, key: str | None) -> Decision:
        """``decision`` moved to the conversation's model when that model is allowed here (a finite score:
        in the catalog and within the request's limits), with propensity 1; else ``decision`` unchanged."""
        model = self.model_for(key)
        if model is None or decision.scores.get(model) is None:
            self.decisions.labels(sticky="false").inc()
            return decision
        self.decisions.labels(sticky="true").inc()
        return Decision(
            model=model,
            scores=decision.scores,
            propensity=1.0,
            estimates=decision.estimates,
            policy_version=decision.policy_version,
            decision_id=decision.decision_id,
        )
