"""The modelwatch simulator: a loopback HTTP server that answers like AI model APIs.

It is the test double for the test suite, the engine of ``modelwatch demo`` and
a tool for rehearsing dashboards (``modelwatch sim``). Behaviour is chosen per
model name from a YAML scenario (see ``scenario`` for every key); each wire
protocol has one module that registers its routes (``openai_chat``,
``openai_responses``, ``openai_realtime``, ``openai_audio``, ``anthropic``,
``gemini``, ``gemini_live``, ``models``; see ``app`` for the modules they share).

    scenario = load_scenario("scenario.yaml")        # or default_scenario()
    server = await start_sim(scenario)               # port 0: a free port
    ... OpenAI(base_url=server.url + "/v1", api_key="sk-test") ...
    await server.close()
"""

from __future__ import annotations

from pathlib import Path

from .app import SimServer, create_app, serve, start_sim
from .scenario import ModelBehaviour, Scenario, ScenarioError, load_scenario, parse_scenario

__all__ = [
    "DEMO_SCENARIO_PATH",
    "ModelBehaviour",
    "Scenario",
    "ScenarioError",
    "SimServer",
    "create_app",
    "default_scenario",
    "load_scenario",
    "serve",
    "start_sim",
]

DEMO_SCENARIO_PATH = Path(__file__).resolve().parent.parent / "data" / "demo-scenario.yaml"


def default_scenario() -> Scenario:
    """The bundled demo scenario used by ``modelwatch demo`` and ``modelwatch sim``."""
    return parse_scenario(DEMO_SCENARIO_PATH.read_text(encoding="utf-8"), source="demo-scenario.yaml (bundled)")
