import sys, runpy
from chaos.sim import requery as simrq
from chaos.sim.policies import POLICY_FACTORIES
class Both(simrq.RequeryPolicySim):
    def __init__(self, **kw):
        super().__init__(live_balance=True, **kw)
        self.name = "jsew+requery"
POLICY_FACTORIES["jsew+requery"] = Both
sys.argv = ["decomp.py"] + sys.argv[1:]
runpy.run_path("docs/sim/wuhan-gap/decompose.py", run_name="__main__")
