"""Which milestone this copy of the engine is (the one line each milestone changes here)."""

MILESTONES = (
    "m0_init",
    "m1_basic",
    "m2_batching",
    "m3_paged",
    "m4_flash",
    "m5_chunked",
    "m6_prefix",
    "m7_gptq",
    "m8_fast",
    "m9_serve",
    "m10_tp",
)

MILESTONE = "m4_flash"


def has_milestone(name: str) -> bool:
    """True when this engine already includes what milestone ``name`` adds."""
    return MILESTONES.index(name) <= MILESTONES.index(MILESTONE)
