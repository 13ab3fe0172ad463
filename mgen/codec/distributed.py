"""The one question codec code asks about distribution: is there a process group with more than one rank?

Codec modules never set distribution up (that is `mgen.train`'s job); they only keep shared state (codebooks,
balancer statistics) identical across ranks when a process group already exists.
"""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
