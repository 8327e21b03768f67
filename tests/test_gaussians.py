import torch

from cfd.gaussians import grow_splats, init_scene, make_optimizer, prune_splats, remap_splats, reset_opacity

LRS = {"means": 1e-2, "log_scales": 1e-2, "quats": 1e-2, "opacity_logits": 1e-2, "sh": 1e-2}


def stepped(n=50):
    scene = init_scene(n, seed=0, opacity=0.5)
    opt = make_optimizer(scene, LRS)
    sum(t.square().sum() for t in scene.tensors().values()).backward()
    opt.step()
    return scene, opt


def test_remap_moves_adam_state_with_the_splats():
    scene, opt = stepped()
    old_avg = opt.state[scene.means]["exp_avg"].clone()
    source = torch.tensor([4, 4, 7])
    fresh = torch.tensor([False, True, False])
    new = remap_splats(scene, opt, source, fresh=fresh)
    assert len(new) == 3 and torch.equal(new.means, scene.means.detach()[source])
    state = opt.state[new.means]
    assert torch.equal(state["exp_avg"][0], old_avg[4]) and torch.equal(state["exp_avg"][2], old_avg[7])
    assert torch.all(state["exp_avg"][1] == 0)
    assert all(g["params"][0] is getattr(new, g["name"]) for g in opt.param_groups)
    sum(t.square().sum() for t in new.tensors().values()).backward()
    opt.step()  # the optimiser runs on the new tensors


def test_grow_clones_and_splits_and_moves_adam_state():
    scene, opt = stepped(4)
    avg = opt.state[scene.means]["exp_avg"].clone()
    with torch.no_grad():
        scene.log_scales[:] = torch.log(torch.tensor([0.005, 0.1, 0.1, 0.005]))[:, None]
    clone = torch.tensor([True, False, False, False])
    split = torch.tensor([False, True, False, False])
    new = grow_splats(scene, opt, clone, split, torch.Generator().manual_seed(0))
    # the unsplit splats 0, 2, 3, the clone of 0, the two halves of 1
    assert len(new) == 6
    torch.testing.assert_close(new.means[:4], scene.means.detach()[[0, 2, 3, 0]])
    scales = new.log_scales.exp().max(dim=1).values
    torch.testing.assert_close(scales[4:], torch.full((2,), 0.1 / 1.6))
    halves = new.means[4:] - scene.means.detach()[1]
    assert not torch.equal(new.means[4], new.means[5]) and halves.norm(dim=-1).max() < 0.5  # samples of splat 1
    state = opt.state[new.means]["exp_avg"]
    torch.testing.assert_close(state[:3], avg[[0, 2, 3]])
    assert torch.all(state[3:] == 0)                # the clone and both halves start fresh
    again = grow_splats(scene, make_optimizer(scene.clone(), LRS), clone, split, torch.Generator().manual_seed(0))
    assert torch.equal(again.means, new.means)      # the offsets come from the generator only


def test_prune_and_reset_opacity():
    scene, opt = stepped(5)
    kept = prune_splats(scene, opt, torch.tensor([False, True, False, True, False]))
    assert torch.equal(kept.means, scene.means.detach()[[0, 2, 4]])
    assert opt.state[kept.means]["exp_avg"].shape == (3, 3)
    with torch.no_grad():
        kept.opacity_logits[:] = torch.tensor([3.0, -5.0, 0.0])
    reset_opacity(kept, opt, 0.02)
    torch.testing.assert_close(kept.opacities, torch.tensor([0.02, torch.sigmoid(torch.tensor(-5.0)).item(), 0.02]))
    assert torch.all(opt.state[kept.opacity_logits]["exp_avg"] == 0)
