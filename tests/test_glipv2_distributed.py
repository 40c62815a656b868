"""GLIPv2 region-word loss across processes: 2 CPU workers (gloo, through detectron2's ``launch``) holding two images
each give the same loss as one process holding all four, and, with ``gather_with_grad``, the same gradients.

Why the relation holds: each process divides its local sum by the positives averaged over processes, so the mean of
the per-process losses equals the one-process loss. Averaging gradients over processes (what DDP does) then gives
the one-process gradient only if each process also receives the gradient the *other* processes' losses have w.r.t.
its embeddings, which is what ``gather_with_grad=True`` sends back; the official gather (``False``) drops it.
"""
import socket

import torch
import torch.distributed as dist
from detectron2.engine import launch

from glip_d2.engine.defaults import end_process_group
from glip_d2.modeling.glipv2 import RegionWordContrastiveLoss, all_gather_cat

REGION_DIM, TOKEN_DIM, EMBED_DIM, NUM_TOKENS = 5, 6, 8, 7
#: image indices held by each of the two workers, and the token length each worker pads its captions to
SPLITS = {"even": (([0, 1], NUM_TOKENS), ([2, 3], NUM_TOKENS)), "uneven": (([0], 5), ([1, 2, 3], NUM_TOKENS))}


def make_images():
    """Four images: detection prompts sharing categories 0-2 across images, one grounding caption (-10); image 0's
    caption is short (5 tokens) so that a worker may hold it with fewer token positions."""
    g = torch.Generator().manual_seed(0)
    lengths = [5, 7, 6, 7]
    counts = [3, 1, 4, 2]
    token_cats = [[-1, 0, 1, -1, 2], [-1, 1, 1, 0, -1, 2, -1], [-1, -1, -1, -1, -1, -1], [-1, 2, -1, 0, 0, -1, -1]]
    region_cats = [[0, 1, 2], [1], [-10, -10, -10, -10], [2, 0]]
    images = []
    for i in range(4):
        maps = torch.zeros(counts[i], NUM_TOKENS)
        for r, cat in enumerate(region_cats[i]):
            if cat >= 0:
                maps[r] = torch.tensor([c == cat for c in token_cats[i]] + [False] * (NUM_TOKENS - lengths[i])).float()
            elif r < 3:  # grounding regions: phrase spans of the caption (the fourth has none)
                maps[r, 1 + r] = 1
        images.append({
            "regions": torch.randn(counts[i], REGION_DIM, generator=g),
            "maps": maps,
            "region_cats": torch.tensor(region_cats[i]),
            "tokens": torch.randn(NUM_TOKENS, TOKEN_DIM, generator=g),
            "mask": (torch.arange(NUM_TOKENS) < lengths[i]).long(),
            "token_cats": torch.tensor(token_cats[i] + [-1] * (NUM_TOKENS - lengths[i])),
        })
    return images


def loss_and_grads(images, num_tokens, gather_with_grad):
    torch.manual_seed(0)
    module = RegionWordContrastiveLoss(REGION_DIM, TOKEN_DIM, embed_dim=EMBED_DIM, zero_pads=True,
                                       gather_with_grad=gather_with_grad)
    loss = module(
        [im["regions"] for im in images],
        [im["maps"][:, :num_tokens] for im in images],
        [im["region_cats"] for im in images],
        torch.stack([im["tokens"][:num_tokens] for im in images]),
        torch.stack([im["mask"][:num_tokens] for im in images]),
        torch.stack([im["token_cats"][:num_tokens] for im in images]),
    )
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def check_all_gather(rank):
    """Rank r sends r+1 rows of value r+1 and weights the gathered rows by (rank+1); the gradient it gets back is
    its own weights only (official) or the sum of every rank's weights (with_grad)."""
    results = {}
    for with_grad in (False, True):
        x = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)
        out = all_gather_cat(x, with_grad=with_grad)
        results[f"values_{with_grad}"] = out.detach()[:, 0].tolist()
        (out * (rank + 1)).sum().backward()
        results[f"grad_{with_grad}"] = x.grad[:, 0].tolist()
    flags = all_gather_cat(torch.tensor([rank == 0, True]))
    results["bool"] = flags.tolist()
    return results


def worker(out_path):
    rank, world = dist.get_rank(), dist.get_world_size()
    images = make_images()
    results = {"gather": [None] * world}
    dist.all_gather_object(results["gather"], check_all_gather(rank))
    for split, parts in SPLITS.items():
        indices, num_tokens = parts[rank]
        for with_grad in (False, True):
            loss, grads = loss_and_grads([images[i] for i in indices], num_tokens, with_grad)
            dist.all_reduce(loss)
            dist.all_reduce(grads)
            results[(split, with_grad)] = (loss / world, grads / world)
    if rank == 0:
        torch.save(results, out_path)
    end_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_match_one_process(tmp_path):
    out_path = str(tmp_path / "distributed.pt")
    launch(worker, num_gpus_per_machine=2, dist_url=f"tcp://127.0.0.1:{free_port()}", args=(out_path,))
    results = torch.load(out_path)

    gather = results["gather"]
    assert gather[0]["values_False"] == gather[1]["values_True"] == [1.0, 2.0, 2.0]
    assert gather[1]["grad_False"] == [2.0, 2.0]  # own weight only
    assert gather[1]["grad_True"] == [3.0, 3.0]  # weights of rank 0 (1) and rank 1 (2)
    assert gather[0]["bool"] == [True, True, False, True]

    single = {w: loss_and_grads(make_images(), NUM_TOKENS, w) for w in (False, True)}
    for split in SPLITS:
        for with_grad in (False, True):
            loss, grads = results[(split, with_grad)]
            single_loss, single_grads = single[with_grad]
            assert torch.allclose(loss, single_loss, atol=1e-5, rtol=1e-5), (split, with_grad)
            if with_grad:
                assert torch.allclose(grads, single_grads, atol=1e-5, rtol=1e-4), split
            else:  # the official gather misses the other processes' share of the gradient
                assert not torch.allclose(grads, single_grads, atol=1e-4, rtol=1e-3), split
