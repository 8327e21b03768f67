import torch

from cfd.gaussians import densify_and_prune, init_scene, make_optimizer, remap_splats

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


def test_densify_clones_small_splits_large_and_prunes_transparent():
    scene, opt = stepped(6)
    with torch.no_grad():
        scene.log_scales[:] = torch.log(torch.tensor([0.005, 0.005, 0.1, 0.1, 0.005, 0.005]))[:, None]
        scene.opacity_logits[5] = -10.0  # opacity ≈ 0: pruned
    grad2d = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    new = densify_and_prune(scene, opt, grad2d, grad_threshold=0.5, split_scale=0.02, min_opacity=0.01,
                            max_scale=1.0, generator=torch.Generator().manual_seed(0))
    # 6 − 1 pruned + 1 clone + 1 split copy
    assert len(new) == 7
    scales = new.log_scales.exp().max(dim=1).values
    assert torch.isclose(scales, torch.tensor(0.1 / 1.6)).sum() == 2      # both halves of the split
    assert torch.isclose(scales, torch.tensor(0.005)).sum() == 4          # 3 kept small + 1 clone
    assert (new.opacities >= 0.01).all()
