"""The values Chang et al. published on the OAI (reference/paper.txt), keyed as our files key them.

Only constants: the document prints each beside ours. Subgroup keys are those of
``kneepain.evaluate.subgroups.SUBGROUPS``; lesion keys those of the CAM and review stages.
"""

from __future__ import annotations

SOURCE = "Chang et al., Pairwise learning of MRI scans ... for prediction of knee pain (bioRxiv 463497)"

# Cohort sizes (Tables 1-2)
SUBJECTS = {"A": 1505, "B": 710, "review": 107}

# Figure 4A/B and the registration ablation (Results, 10-fold cross-validation)
AUC = {"A": 0.808, "B": 0.853}
AUC_UNREGISTERED = {"A": 0.769, "B": 0.812}

# Discussion: Siamese networks on the review split's test part (n = 107), and Figure 3A/B's CAMs
ARCHITECTURE_AUC = {"kneenet": 0.862, "vgg16_gap": 0.856, "alexnet_gap": 0.863}
CAM_MAP = {"kneenet": "28 x 28", "vgg16_gap": "14 x 14"}
CAM_AREA_ABOVE_HALF = {"kneenet": (6.0, 2.4), "vgg16_gap": (22.3, 9.4)}  # % of the image, mean and SD

# Figure 4C: subgroup -> (Model A n, AUC, Model B n, AUC); "*" marks an n reduced by missing KL grades
SUBGROUPS = {
    "overall": ("1505", 0.808, "710", 0.853),
    "kl_difference_0": ("766", 0.701, "324", 0.758),
    "kl_difference_gt0": ("603*", 0.946, "323*", 0.962),
    "kl_painful_0": ("403", 0.622, "170", 0.594),
    "kl_painful_gt0": ("1010*", 0.857, "486*", 0.911),
    "bmi_ge30": ("533", 0.853, "295", 0.879),
    "bmi_lt30": ("972", 0.775, "415", 0.832),
    "age_ge60": ("792", 0.819, "362", 0.863),
    "age_lt60": ("713", 0.791, "348", 0.839),
    "male": ("653", 0.854, "283", 0.891),
    "female": ("852", 0.766, "427", 0.822),
}

# Table 1b-d: group -> parameter -> (left knee pain, right knee pain, p)
TABLE1 = {
    "Model A": {
        "Subjects": ("n = 734", "n = 771", None),
        "Percent female": ("57.9", "55.9", 0.700),
        "Age (years)": ("60.13 ± 9.18", "61.24 ± 8.98", 0.018),
        "BMI (kg/m2)": ("28.97 ± 4.88", "28.38 ± 4.53", 0.015),
    },
    "Model B": {
        "Subjects": ("n = 350", "n = 360", None),
        "Percent female": ("59.4", "60.8", 0.854),
        "Age (years)": ("60.62 ± 9.39", "61.21 ± 9.01", 0.395),
        "BMI (kg/m2)": ("29.50 ± 4.96", "28.94 ± 4.63", 0.120),
    },
    "Review set": {
        "Subjects": ("n = 46", "n = 61", None),
        "Percent female": ("60.9", "59.0", 1.000),
        "Age (years)": ("60.83 ± 9.34", "60.67 ± 8.90", 0.932),
        "BMI (kg/m2)": ("29.38 ± 5.30", "29.01 ± 4.89", 0.711),
    },
}

# Table 2, the review split (70/15/15 of Model B, stratified by sex, age and BMI): part -> values
TABLE2_SPLIT = {
    "n": ("496", "107", "107"),
    "Women (%)": ("59.2", "62.0", "60.1"),
    "Age (years)": ("61.0 ± 9.3", "60.5 ± 9.0", "60.6 ± 9.1"),
    "BMI (kg/m2)": ("29.1 ± 4.7", "29.4 ± 5.0", "29.2 ± 5.0"),
}

# Figure 3I: one radiologist, 107 test cases: lesion -> (n, % of cases, prediction correct, wrong)
LESIONS = {
    "total": (107, 100.0, 81, 26),
    "effusion_synovitis": (95, 88.8, 70, 25),
    "bone_marrow_lesion": (5, 4.7, 5, 0),
    "hoffa_synovitis": (4, 3.7, 3, 1),
    "cartilage_loss": (2, 1.9, 2, 0),
    "meniscal_damage": (1, 0.9, 1, 0),
}

# Methods: the published training recipe
METHODS = (
    "The paper trained a Siamese KneeNet (28 x 28 class activation maps at 224 x 224 input) with SGD "
    "(momentum 0.9, learning rate 1e-4 decayed x0.1 every 20 epochs, batch 64, cross-entropy, up to 500 "
    "epochs), evaluated by 10-fold cross-validation on Model A (1,505 participants) and Model B (710), "
    "and trained one more model on a 70/15/15 split of Model B whose 107 test cases a radiologist reviewed."
)
