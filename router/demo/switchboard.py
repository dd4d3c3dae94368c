"""The demo's switchboard: a fault proxy on every link between tiers, and a tiny HTTP control
endpoint that cuts and restores them (`POST /cut/regional`, `/restore/all`, `GET /`).

A cut makes the proxy reset every connection, as a dead link or a stopped tier would; the
routers notice through their health checks and fall back, or go offline when nothing is left."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from router.testing.faults import FaultProxy

# link name -> the tier it leads to
LINKS = {"edge->regional": "regional", "edge->central": "central", "regional->central": "central"}
CUTTABLE = ("regional", "central", "all")


@dataclass
class Switchboard:
    tier_ports: dict[str, int]
    proxies: dict[str, FaultProxy] = field(default_factory=dict)
    cut_tiers: set[str] = field(default_factory=set)

    async def start(self) -> Switchboard:
        for link, tier in LINKS.items():
            self.proxies[link] = await FaultProxy("127.0.0.1", self.tier_ports[tier]).start()
        return self

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.close()

    def urls(self) -> dict[str, str]:
        return {link: proxy.url for link, proxy in self.proxies.items()}

    def set_cut(self, tier: str, cut: bool) -> None:
        tiers = {"regional", "central"} if tier == "all" else {tier}
        self.cut_tiers = self.cut_tiers | tiers if cut else self.cut_tiers - tiers
        for link, target in LINKS.items():
            proxy = self.proxies[link]
            proxy.faults.reset = target in self.cut_tiers
            if proxy.faults.reset:
                proxy.drop_connections()  # pooled connections must meet the cut too

    def state(self) -> dict[str, Any]:
        return {
            "cut": sorted(self.cut_tiers),
            "links": {
                link: "cut" if LINKS[link] in self.cut_tiers else "up" for link in self.proxies
            },
        }


def control_app(board: Switchboard, topology: dict[str, Any]) -> web.Application:
    async def status(request: web.Request) -> web.Response:
        return web.json_response({"topology": topology, **board.state()})

    def switch(cut: bool) -> Any:
        async def handler(request: web.Request) -> web.Response:
            tier = request.match_info["tier"]
            if tier not in CUTTABLE:
                return web.json_response(
                    {"error": f"unknown tier '{tier}': one of {', '.join(CUTTABLE)}"}, status=404
                )
            board.set_cut(tier, cut)
            return web.json_response(board.state())

        return handler

    app = web.Application()
    app.router.add_get("/", status)
    app.router.add_post("/cut/{tier}", switch(True))
    app.router.add_post("/restore/{tier}", switch(False))
    return app
