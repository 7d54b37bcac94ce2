"""Stand-ins shared by several test files (imported as ``from fakes import ...``)."""

import torch


class FakeTextEncoder:
    """TextEncoder's interface without a language model: one token per word, from a fixed random table."""

    name = "fake"

    def __init__(self, max_length: int = 6, dim: int = 8):
        self.max_length, self.dim = max_length, dim
        self.table = torch.randn(64, dim, generator=torch.Generator().manual_seed(0))

    def encode(self, prompts):
        if not isinstance(prompts, list) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        tokens = torch.zeros(len(prompts), self.max_length, self.dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            for j, word in enumerate(prompt.split()[: self.max_length]):
                tokens[i, j], mask[i, j] = self.table[sum(map(ord, word)) % 64], True
        return tokens, mask
