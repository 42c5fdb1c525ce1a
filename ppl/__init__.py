"""steerppl: probabilistic programs that steer language models, compiled to JAX.

The LM is the prior; constraints, rewards and other prompts are likelihoods; the answer is
the posterior, approximated by a backend chosen with ``ppl.infer(program, method=...)``.
"""

from ppl import models
from ppl.api import infer, infer_many, log_z_bounds, methods, register_method
from ppl.context import Context
from ppl.dists import TokenDist
from ppl.models.chat import chat
from ppl.program import Program
from ppl.errors import InferenceError, PPLError, ProgramError
from ppl.result import Result
from ppl.steering import SteerProgram, steer

__all__ = [
    "Context",
    "InferenceError",
    "PPLError",
    "Program",
    "ProgramError",
    "Result",
    "SteerProgram",
    "TokenDist",
    "chat",
    "infer",
    "log_z_bounds",
    "infer_many",
    "methods",
    "models",
    "register_method",
    "steer",
]

__version__ = "0.1.0"
