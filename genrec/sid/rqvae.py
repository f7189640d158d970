"""RQ-VAE (Zeghidour et al. 2021; TIGER's tokeniser), small and on CPU: an optional quantiser.

An MLP encoder maps an item vector to a latent, L codebooks quantise the latent residually with a
straight-through estimator, and an MLP decoder reconstructs the vector. Codebooks start from
residual k-means on the first encoding (a random start leaves most codes dead), and codes that no
item uses after an epoch are moved onto random latents. Seeded and single-process: the same seed
and input give the same codes.
"""

from __future__ import annotations

import numpy as np

from genrec.config import SidConfig
from genrec.sid.quantize import Quantised, squared_distances


def rq_vae(features: np.ndarray, config: SidConfig) -> Quantised:
    import torch

    threads = torch.get_num_threads()
    if config.rqvae_threads:
        torch.set_num_threads(config.rqvae_threads)
    try:
        return _train_and_encode(features, config)
    finally:
        torch.set_num_threads(threads)


def _train_and_encode(features: np.ndarray, config: SidConfig) -> Quantised:
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    data = torch.as_tensor(np.asarray(features, dtype=np.float32))
    n, dim = data.shape
    k = min(config.codes_per_level, n)

    def mlp(inp: int, out: int) -> nn.Module:
        return nn.Sequential(nn.Linear(inp, config.rqvae_hidden_dim), nn.ReLU(),
                             nn.Linear(config.rqvae_hidden_dim, out))

    encoder, decoder = mlp(dim, config.rqvae_latent_dim), mlp(config.rqvae_latent_dim, dim)
    with torch.no_grad():
        start = _rq_kmeans_init(encoder(data).numpy(), k, config)
    codebooks = nn.ParameterList([nn.Parameter(torch.as_tensor(c, dtype=torch.float32)) for c in start])
    params = [*encoder.parameters(), *decoder.parameters(), *codebooks.parameters()]
    optimiser = torch.optim.Adam(params, lr=config.rqvae_lr)

    def quantise(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        residual, quantised = latent, torch.zeros_like(latent)
        commitment = latent.new_zeros(())
        codes = []
        for book in codebooks:
            index = torch.cdist(residual, book).argmin(dim=1)
            chosen = book[index]
            # Codebook moves to the encoder output; encoder commits to its codes (VQ-VAE losses).
            commitment = commitment + ((chosen - residual.detach()) ** 2).mean() \
                + config.rqvae_commitment * ((residual - chosen.detach()) ** 2).mean()
            quantised = quantised + chosen
            residual = residual - chosen.detach()
            codes.append(index)
        # Straight-through: the decoder's gradient passes to the encoder as if unquantised.
        return latent + (quantised - latent).detach(), commitment, codes

    for _ in range(config.rqvae_epochs):
        order = torch.randperm(n, generator=generator)
        for batch_start in range(0, n, config.rqvae_batch_size):
            batch = data[order[batch_start:batch_start + config.rqvae_batch_size]]
            quantised, commitment, _ = quantise(encoder(batch))
            loss = ((decoder(quantised) - batch) ** 2).sum(dim=1).mean() + commitment
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        _revive_dead_codes(codebooks, encoder, data, generator)

    with torch.no_grad():
        latent = encoder(data)
        _, _, codes = quantise(latent)
        code_array = torch.stack(codes, dim=1).numpy().astype(np.int64)
        centroids = [book.detach().numpy().astype(np.float64) for book in codebooks]
        residual = latent.numpy().astype(np.float64)
        for level, book in enumerate(centroids):
            residual = residual - book[code_array[:, level]]
    return Quantised(code_array, centroids, (residual**2).sum(axis=1))


def _rq_kmeans_init(latent: np.ndarray, k: int, config: SidConfig) -> list[np.ndarray]:
    from genrec.sid.quantize import kmeans

    residual = latent.astype(np.float64)
    books = []
    for level in range(config.levels):
        centroids, labels = kmeans(residual, k, config.kmeans_iters, config.seed + level, balanced=False,
                                   slack=1.0)
        books.append(centroids)
        residual = residual - centroids[labels]
    return books


def _revive_dead_codes(codebooks, encoder, data, generator) -> None:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        residual = encoder(data)
        for book in codebooks:
            index = torch.as_tensor(squared_distances(residual.numpy(), book.detach().numpy()).argmin(axis=1))
            used = torch.bincount(index, minlength=len(book)) > 0
            dead = (~used).nonzero().ravel()
            if dead.numel():
                pick = torch.randint(0, len(data), (dead.numel(),), generator=generator)
                book.data[dead] = residual[pick]
                index = torch.cdist(residual, book).argmin(dim=1)
            residual = residual - book[index]
