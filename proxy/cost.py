"""Cost model (placeholder until the cost-model work lands)."""
from pydantic import BaseModel, ConfigDict


class Weights(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
