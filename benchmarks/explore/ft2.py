"""Exploration 2: synthetic KD + reverse-engineered universal trigger unlearning."""
import sys, time, argparse
import torch, torch.nn.functional as F
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))
from case import Case
from edgeclean.cc import CCConfig, clean_and_compact
from edgeclean.load import input_model
from edgeclean.ranks import estimate_bytes
from edgeclean.finetune import augment, FinetuneConfig, kd_loss

ap = argparse.ArgumentParser()
ap.add_argument("--suspect", default="models/demo_badnets_resnet18.pt")
ap.add_argument("--n", type=int, default=512)
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--T", type=float, default=4.0)
ap.add_argument("--ratio", type=float, default=8)
ap.add_argument("--kind", default="mask")  # mask | additive
ap.add_argument("--classes", default="oracle")  # oracle | all
ap.add_argument("--lam", type=float, default=0.01)
ap.add_argument("--eps", type=float, default=0.2)
ap.add_argument("--trig-steps", type=int, default=200)
ap.add_argument("--w", type=float, default=1.0)
ap.add_argument("--refresh", type=int, default=0)  # re-optimise trigger on the student every k steps
ap.add_argument("--prune", type=float, default=0)  # >0: prune teacher head inputs until trigger success below this
ap.add_argument("--eval-every", type=int, default=200)
args = ap.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
case = Case(args.suspect)
path, model, spec, target, ev, test = case.path, case.model, case.spec, case.target, case.ev, case.test
print("suspect", ev(model), flush=True)
budget = int(estimate_bytes(model) / args.ratio)
student, rep = clean_and_compact(model, spec, budget_bytes=budget, config=CCConfig(do_finetune=False, do_scale=False))
import glob; d = torch.load(sorted(glob.glob(f".cache/cc_synth/{path.stem}_*_None_None_0.pt"))[-1], weights_only=True)
images = d["images"][: args.n]
S, T = input_model(student, spec), input_model(model, spec).eval()
for p in T.parameters(): p.requires_grad_(False)
C, H, W = spec.input_shape
K = spec.num_classes

def reverse(net, x, t, kind):
    """Universal trigger sending x to class t. Returns stamp(x) function and success rate."""
    was = net.training; net.eval()
    for q in net.parameters(): q.requires_grad_(False)
    if kind == "mask":
        m_logit = torch.full((1, 1, H, W), -3.0, requires_grad=True)
        p_logit = torch.zeros((1, C, H, W), requires_grad=True)
        opt = torch.optim.Adam([m_logit, p_logit], lr=0.1)
        for i in range(args.trig_steps):
            m, p = torch.sigmoid(m_logit), torch.sigmoid(p_logit)
            xs = (1 - m) * x + m * p
            loss = F.cross_entropy(net(xs), torch.full((len(x),), t)) + args.lam * m.sum() / (H * W) * 100
            opt.zero_grad(); loss.backward(); opt.step()
        mm, pp = torch.sigmoid(m_logit).detach(), torch.sigmoid(p_logit).detach()
        stamp = lambda z: (1 - mm) * z + mm * pp
        m = mm
        info = f"mask L1 {float(m.sum()):.1f}"
    else:
        delta = torch.zeros((1, C, H, W), requires_grad=True)
        opt = torch.optim.Adam([delta], lr=0.01)
        for i in range(args.trig_steps):
            xs = (x + delta).clamp(0, 1)
            loss = F.cross_entropy(net(xs), torch.full((len(x),), t))
            opt.zero_grad(); loss.backward(); opt.step()
            with torch.no_grad(): delta.clamp_(-args.eps, args.eps)
        dd = delta.detach()
        stamp = lambda z: (z + dd).clamp(0, 1)
        info = f"delta linf {float(dd.abs().max()):.2f}"
    with torch.no_grad():
        succ = float((net(stamp(x)).argmax(1) == t).float().mean())
    for q in net.parameters(): q.requires_grad_(True)
    net.train(was)
    return stamp, succ, info

classes = [target] if args.classes == "oracle" else list(range(K))
t0 = time.time()
probe_x = images[:128]
stamps = []
for c in classes:
    st, succ, info = reverse(T, probe_x, c, args.kind)
    stamps.append(st)
    print(f"trigger class {c}: success {succ:.2f} {info}", flush=True)
print(f"reverse {time.time()-t0:.0f}s", flush=True)
# does the reversed trigger work on real test images (how trigger-like is it)?
with torch.no_grad():
    xt = test.x[:500].float()
    if xt.max() > 1.5: xt = xt / 255
    if xt.ndim == 3: xt = xt[:, None]
    for c, st in zip(classes, stamps):
        print(f"  class {c} trigger on real test: {float((T(st(xt)).argmax(1) == c).float().mean()):.2f}", flush=True)
if args.prune:
    from torch import nn
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    shead = [m for m in student.modules() if isinstance(m, nn.Linear)][-1]
    feats = {}
    h = head.register_forward_pre_hook(lambda m, i: feats.__setitem__("a", i[0]))
    xe = images[128:256]
    with torch.no_grad():
        T(xe); a_clean = feats["a"].clone()
        a_trig = []
        for st in stamps:
            T(st(xe)); a_trig.append(feats["a"].clone())
    h.remove()
    diff = torch.stack([(a - a_clean).mean(0) for a in a_trig]).max(0).values
    order = diff.argsort(descending=True)
    W0 = head.weight.data.clone()
    for k in range(1, len(order)):
        head.weight.data = W0.clone(); head.weight.data[:, order[:k]] = 0
        with torch.no_grad():
            succ = max(float((T(st(xe)).argmax(1) == c).float().mean()) for c, st in zip(classes, stamps))
        if succ < args.prune: break
    shead.weight.data[:, order[:k]] = 0
    print("pruned", k, "succ", succ, "teacher now", ev(model), flush=True)
cfg = FinetuneConfig()
gen = torch.Generator().manual_seed(0)
opt = torch.optim.Adam([p for p in S.parameters() if p.requires_grad], lr=args.lr)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
S.train()
t0 = time.time()
for step in range(args.steps):
    if args.refresh and step and step % args.refresh == 0:
        stamps = [reverse(S, probe_x, c, args.kind)[0] for c in classes]
    idx = torch.randint(0, len(images), (64,), generator=gen)
    x = augment(images[idx], cfg, gen)
    with torch.no_grad(): tl = T(x)
    loss = kd_loss(S(x), tl, args.T)
    if args.w:
        k = torch.randint(0, len(stamps), (1,), generator=gen).item()
        xs = stamps[k](x[:32])
        loss = loss + args.w * kd_loss(S(xs), tl[:32], args.T)
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if (step + 1) % args.eval_every == 0:
        S.eval(); print(step + 1, "loss %.3f" % loss.item(), ev(student), f"{time.time()-t0:.0f}s", flush=True); S.train()
