"""Exploration 3: NC-style patch of the teacher: prune penultimate neurons the reversed trigger excites."""
import sys, time, argparse, copy
import torch, torch.nn.functional as F
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))))
from pathlib import Path
from edgeclean.data import load_fashion_mnist
from edgeclean.load import input_model, load_suspect, read_card
from edgeclean.metrics import evaluate
from torch import nn

ap = argparse.ArgumentParser()
ap.add_argument("--suspect", default="models/demo_badnets_resnet18.pt")
ap.add_argument("--lam", type=float, default=0.05)
ap.add_argument("--kind", default="mask")
ap.add_argument("--eps", type=float, default=0.2)
ap.add_argument("--target", type=int, default=None)
args = ap.parse_args()
torch.set_num_threads(1); torch.manual_seed(0)
path = Path(args.suspect); card = read_card(path)
model, spec = load_suspect(path)
attack, target, params = card.get("attack"), card.get("target"), card.get("attack_params")
tc = target if args.target is None else args.target
test = load_fashion_mnist("test").subset(range(1000))
def ev(m):
    r = evaluate(input_model(m, spec).eval(), test, attack, target, params)
    return round(r["ca"] * 100, 1), round(r.get("asr", float("nan")) * 100, 1)
print("suspect", ev(model), "target", target, flush=True)
d = torch.load(f".cache/cc_synth/{path.stem}_256_None_None_0.pt", weights_only=True)
images = d["images"]
T = input_model(model, spec).eval()
for q in T.parameters(): q.requires_grad_(False)
C, H, W = spec.input_shape
x = images[:128]
if args.kind == "mask":
    m_logit = torch.full((1, 1, H, W), -3.0, requires_grad=True); p_logit = torch.zeros((1, C, H, W), requires_grad=True)
    opt = torch.optim.Adam([m_logit, p_logit], lr=0.1)
    for i in range(200):
        m, p = torch.sigmoid(m_logit), torch.sigmoid(p_logit)
        loss = F.cross_entropy(T((1 - m) * x + m * p), torch.full((len(x),), tc)) + args.lam * m.mean() * 100
        opt.zero_grad(); loss.backward(); opt.step()
    mm, pp = torch.sigmoid(m_logit).detach(), torch.sigmoid(p_logit).detach()
    stamp = lambda z: (1 - mm) * z + mm * pp
else:
    delta = torch.zeros((1, C, H, W), requires_grad=True); opt = torch.optim.Adam([delta], lr=0.01)
    for i in range(200):
        loss = F.cross_entropy(T((x + delta).clamp(0, 1)), torch.full((len(x),), tc))
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad(): delta.clamp_(-args.eps, args.eps)
    dd = delta.detach(); stamp = lambda z: (z + dd).clamp(0, 1)
head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
feats = {}
head.register_forward_pre_hook(lambda m, i: feats.__setitem__("a", i[0]))
xe = images[128:256]
with torch.no_grad():
    T(xe); a_clean = feats["a"].clone()
    s_pred = T(stamp(xe)).argmax(1); a_trig = feats["a"].clone()
print("trigger success on held-out synth", float((s_pred == tc).float().mean()))
W0 = head.weight.data.clone()
def recall_t(m):
    with torch.no_grad():
        mm_ = input_model(m, spec).eval(); sel = test.y == target
        xx = test.x[sel].float()
        return round(float((mm_(xx).argmax(1) == target).float().mean()), 3)
B0 = head.bias.data.clone()
mu = a_clean.mean(0)
for rank_by in ["diff"]:
    diff = (a_trig - a_clean).mean(0)
    order = diff.argsort(descending=True)
    for mode in ["zero", "mean"]:
        for k in [16, 24, 32, 48]:
            head.weight.data = W0.clone(); head.bias.data = B0.clone()
            sel = order[:k]
            if mode == "mean": head.bias.data += W0[:, sel] @ mu[sel]
            head.weight.data[:, sel] = 0
            with torch.no_grad(): ps = T(stamp(xe)).argmax(1)
            print(rank_by, mode, k, "synth succ %.2f" % float((ps == tc).float().mean()), "real", ev(model), "recall_t", recall_t(model), flush=True)
head.weight.data = W0
