"""Similarity of two grey images on a common area: MSE, NCC and SSIM (masked)."""
import cv2
import numpy as np


def _as_float(image):
    return np.asarray(image, dtype=np.float64)


def mse(a, b, mask):
    a, b = _as_float(a)[mask], _as_float(b)[mask]
    return float(np.mean((a - b) ** 2)) if a.size else float("nan")


def ncc(a, b, mask):
    """Zero-mean normalised cross-correlation over the masked pixels (1 = identical up to gain/offset)."""
    a, b = _as_float(a)[mask], _as_float(b)[mask]
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denominator) if denominator > 0 else float("nan")


def ssim(a, b, mask, data_range=255.0, sigma=1.5):
    """Mean SSIM (Wang et al. 2004, Gaussian window sigma 1.5) over masked pixels whose window is all valid."""
    # float32 halves the cost; the means are of 8/16-bit data, well inside its precision
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    weight = mask.astype(np.float32)
    ksize = (0, 0)

    def blur(x):
        return cv2.GaussianBlur(x, ksize, sigma, borderType=cv2.BORDER_REFLECT)

    # windows touching invalid pixels would mix in the fill value: keep only fully valid windows
    inner = cv2.erode(mask.astype(np.uint8), np.ones((13, 13), np.uint8)).astype(bool)  # GaussianBlur(sigma 1.5) reaches 6 px
    if not inner.any():
        return float("nan")
    a = a * weight
    b = b * weight
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map[inner].astype(np.float64).mean())


def compare(a, b, mask, data_range=255.0):
    """{"mse", "ncc", "ssim"} of grey images a, b on `mask` (bool), rounded for the report."""
    return {"mse": round(mse(a, b, mask), 3), "ncc": round(ncc(a, b, mask), 5),
            "ssim": round(ssim(a, b, mask, data_range), 5)}
